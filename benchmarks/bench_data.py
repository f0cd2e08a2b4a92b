"""Issue 3: encode+pack throughput of a mixed shard set, as a ratio to plain tar reading of the same
shards, both measured in this run (median of repeats, alternating so machine noise hits both).

Run: python benchmarks/bench_data.py
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
from mbp.data.batches import batches, encoded_stream
from mbp.data.encode import SampleEncoder, match_field
from mbp.data.read import read_samples
from mbp.data.skips import SkipLog
from mbp.plugins import get_platform
from mbp.resolve import resolve
from PIL import Image

from benchmarks.common import median_seconds, save

REGISTRY = """\
pipelines:
  mixed:
    fields:
      scene: {type: pixels}
      photo: {type: image}
      tone: {type: wav}
      passage: {type: text}
    optional: [scene, photo, tone, passage]
    head: {type: lm}
    model:
      stages:
        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, seq_len: 8}
"""


def make_shards(folder: Path, samples: int = 800, per_shard: int = 200, scale: int = 1) -> list[str]:
    """Scenes (PNG, fed as pixels and as file bytes), tones (16-bit WAV) and texts in equal parts.
    ``scale`` grows every sample: side 48*scale pixels, scale seconds of audio, 10 KB*scale**2 of text."""
    rng = np.random.default_rng(0)
    paths = []
    for shard in range(samples // per_shard):
        path = folder / f"mixed-{scale}-{shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                kind = i % 4
                if kind in (0, 1):
                    image = Image.fromarray(rng.integers(0, 256, (48 * scale, 48 * scale, 3), dtype=np.uint8))
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    name, data = ("scene.png" if kind == 0 else "photo.png"), buffer.getvalue()
                elif kind == 2:
                    buffer = io.BytesIO()
                    tone = rng.uniform(-0.5, 0.5, 8000 * scale)
                    sf.write(buffer, tone, 8000, subtype="PCM_16", format="WAV")
                    name, data = "tone.wav", buffer.getvalue()
                else:
                    name, data = "passage.txt", ("a passage of plain text. " * 400 * scale * scale).encode()
                info = tarfile.TarInfo(f"{shard:04d}{i:05d}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def measure(folder: Path, scale: int, samples: int) -> dict[str, object]:
    shards = make_shards(folder, samples=samples, per_shard=samples // 4, scale=scale)
    size_mb = sum(Path(s).stat().st_size for s in shards) / 1e6
    resolved = resolve(str(folder / "registry.yaml"), "mixed", components=get_platform().components)

    def plain() -> None:
        for shard in shards:
            with tarfile.open(shard) as tar:
                for member in tar:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        handle.read()

    def encode_and_pack() -> None:
        stream = encoded_stream(shards, resolved.encoder, 1 << 20, SkipLog(), repeat=False)
        for _ in batches(stream, 4, 1 << 20, pack=True):
            pass

    plain_s = median_seconds(plain, repeats=5)
    ours_s = median_seconds(encode_and_pack, repeats=5)
    return {
        "shard_mb": round(size_mb, 1),
        "plain_tar_mb_per_s": round(size_mb / plain_s, 1),
        "encode_pack_mb_per_s": round(size_mb / ours_s, 1),
        "ratio_encode_pack_to_plain": round(plain_s / ours_s, 3),
        "breakdown_ms": breakdown(shards, resolved.encoder),
    }


def breakdown(shards: list[str], encoder: SampleEncoder) -> dict[str, float]:
    """Where mbp's time goes, each part measured alone (best of 3): reading and grouping samples with
    webdataset, and each field's codec, summed over the shard set. Plain tar reading bounds the first;
    the codecs' decoding work is what no reader can skip."""
    samples = list(read_samples(shards, SkipLog()))

    def codec_seconds(field: str) -> float:
        codec = encoder.codecs[field]
        payloads = [s.fields[name] for s in samples if (name := match_field(s.fields, field))]
        return min(_timed(lambda: [codec.encode(p) for p in payloads]) for _ in range(3))

    parts = {"webdataset_read": min(_timed(lambda: list(read_samples(shards, SkipLog()))) for _ in range(3))}
    parts |= {f"codec_{field}": codec_seconds(field) for field in encoder.codecs}
    return {name: round(seconds * 1e3, 1) for name, seconds in parts.items()}


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "registry.yaml").write_text(REGISTRY)
        save(
            "data",
            {
                "small_samples_10kb": measure(folder, scale=1, samples=800),
                "large_samples_150kb": measure(folder, scale=4, samples=160),
            },
        )


if __name__ == "__main__":
    main()
