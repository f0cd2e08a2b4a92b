"""Generated segments become files, each through its codec: the core's one use of ``Codec.to_file``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mbp.codec import Codec
from mbp.errors import MbpError
from mbp.protocol import decode_lenient
from mbp.traits import codec_traits, file_extension


def write_segments(
    tokens: list[int],
    skip: int,
    out_dir: Path,
    codec_for: Callable[[str], Codec],
    warn: Callable[[str], None],
) -> list[str]:
    """Write every segment of a token stream after the first ``skip`` as a file through its codec, as
    ``codec_for`` builds it by the segment's codec name (a cut-off last one too, named ``-partial``); a
    segment its codec rejects keeps its raw payload."""
    decoded = decode_lenient(tokens)
    if decoded.broken:  # sampling can emit any token: keep every segment before the break
        warn(f"generated stream breaks the segment format ({decoded.broken}); kept what came before")
    segments = decoded.segments[skip:] + ([decoded.partial] if decoded.partial else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, segment in enumerate(segments):
        partial = decoded.partial is segment
        try:
            codec = codec_for(segment.codec)
            data = codec.to_file(segment)
            ext = file_extension(codec, codec_traits(codec), segment)
        except MbpError as error:
            warn(
                f"segment {index} ({segment.codec or '?'}{', cut off' if partial else ''}) not decodable: "
                f"{error}; raw payload kept"
            )
            data, ext = segment.payload, "bin"
        path = out_dir / f"segment-{index:02d}{'-partial' if partial else ''}.{ext}"
        path.write_bytes(data)
        written.append(str(path))
    return written
