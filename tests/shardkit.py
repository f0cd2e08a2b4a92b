"""Building small shard sets for tests, including deliberately broken ones."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

REGISTRY = """\
pipelines:
  qa:
    fields:
      scene: {type: pixels}
      tone: {type: wav}
      question: {type: text}
      answer: {type: text}
    optional: [scene, tone]
    head: {type: vqa}
    model:
      stages:
        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, seq_len: 4}
    # one sample a row, read in order: the tests count samples by rows and place damage by position
    data: {seq_len: 256, batch_size: 4, pack: false, shuffle_buffer: 0}
    train: {steps: 6, warmup_steps: 2, eval_every: 3, checkpoint_every: 2, log_every: 1, keep_checkpoints: 2}
"""


def tiny_registry(name: str, fields: dict[str, str], head: str, dims: tuple[int, int], patch: int) -> str:
    """A registry with one tiny 2-stage pipeline ``name``: ``fields`` maps names to codec types, and
    ``head`` is the inside of its YAML flow mapping."""
    lines = ["pipelines:", f"  {name}:", "    fields:"]
    lines += [f"      {field}: {{type: {codec}}}" for field, codec in fields.items()]
    lines += [
        f"    head: {{{head}}}",
        "    model:",
        "      stages:",
        f"        - {{backbone: {{type: transformer, heads: 2}}, dim: {dims[0]}, layers: 1}}",
        f"        - {{backbone: {{type: transformer, heads: 2}}, dim: {dims[1]}, layers: 1, patch: {patch}}}",
    ]
    return "\n".join(lines) + "\n"


def lm_registry(patch: int, data: str, train: str = "") -> str:
    """A registry with one tiny byte-level language model, ``lm``: ``data`` and ``train`` are the
    inside of their YAML flow mappings."""
    text = tiny_registry("lm", {"txt": "text"}, "type: lm", (16, 16), patch) + f"    data: {{{data}}}\n"
    return text + (f"    train: {{{train}}}\n" if train else "")


def qa_registry(head: str = "type: vqa") -> str:
    """A registry with one tiny question-answering model, ``ask``: ``head`` is the inside of its YAML
    flow mapping."""
    return tiny_registry("ask", {"question": "text", "answer": "text"}, head, (32, 16), 4)


def png(colour: tuple[int, int, int] = (200, 30, 30), side: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wav() -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((40, 1)), 8000, subtype="PCM_U8", format="WAV")
    return buffer.getvalue()


def tar_bytes(samples: list[dict[str, bytes]]) -> bytes:
    """An uncompressed tar of ``samples``, one member a field (``KEY.FIELD``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for sample in samples:
            key = sample["__key__"].decode()
            for field, data in sample.items():
                if field == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    path.write_bytes(tar_bytes(samples))


def qa(key: str, **fields: bytes) -> dict[str, bytes]:
    base = {"__key__": key.encode(), "question.txt": b"what colour?", "answer.txt": b"red"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def good_samples(prefix: str, count: int) -> list[dict[str, bytes]]:
    return [
        qa(f"{prefix}{i:03d}", **{"scene.png": png()} if i % 2 else {"tone.wav": wav()}) for i in range(count)
    ]


def corrupt_set(folder: Path) -> list[str]:
    """Shards with known damage. Expected: 5 good samples, 4 skipped samples, 2 failed shards."""
    folder.mkdir(parents=True, exist_ok=True)
    mixed = [
        *good_samples("g", 3),
        {"__key__": b"nofield", "scene.png": png(), "question.txt": b"q?"},  # missing answer
        qa("badimage", **{"scene.png": b"\x89PNG\r\n\x1a\n not really a png"}),  # undecodable image
        qa("badwav", **{"tone.wav": b"this is text, not audio"}),  # not audio
    ]
    write_tar(folder / "a-mixed.tar", mixed)
    write_tar(folder / "b-truncated.tar", good_samples("t", 3))
    data = (folder / "b-truncated.tar").read_bytes()
    with tarfile.open(folder / "b-truncated.tar") as tar:
        last = tar.getmembers()[-1]  # the third sample's answer: cut inside its data
    (folder / "b-truncated.tar").write_bytes(data[: last.offset_data + 1])
    (folder / "c-notatar.tar").write_bytes(b"definitely not a tar archive " * 40)
    return [str(p) for p in sorted(folder.glob("*.tar"))]
