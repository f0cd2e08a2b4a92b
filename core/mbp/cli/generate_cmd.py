"""``mbp generate``: continue a prompt with a trained checkpoint; text streams to stdout, other segments
are written through their codecs with ``--out``."""

from __future__ import annotations

import codecs as textcodecs
import json
import math
import sys
from pathlib import Path

import click

from mbp.cli.common import say
from mbp.errors import CheckpointError, CodecError, ConfigError


@click.command("generate")
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--prompt", default=None, help="Text the generated segment starts with.")
@click.option(
    "--prompt-file", type=click.Path(dir_okay=False, path_type=Path), help="Read the prompt text from a file."
)
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=VALUE",
    help="A complete segment before the prompt, encoded by the checkpoint pipeline's codec for NAME; "
    "VALUE is text, or @PATH for a file. Repeatable, in order.",
)
@click.option(
    "--codec", "open_codec", default="text", show_default=True, help="Codec of the segment to generate."
)
@click.option("--max-bytes", default=256, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 is greedy."
)
@click.option("--top-k", default=None, type=click.IntRange(min=1))
@click.option("--top-p", default=None, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=None, type=int)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write every generated segment as a file here (images, WAV, text).",
)
def generate_command(
    checkpoint: Path,
    prompt: str | None,
    prompt_file: Path | None,
    fields: tuple[str, ...],
    open_codec: str,
    max_bytes: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    out_dir: Path | None,
) -> None:
    """Generate bytes from a checkpoint written by `mbp run`."""
    import torch
    from pydantic import ValidationError

    from mbp.codec import Codec, write_segments
    from mbp.config import Pipeline
    from mbp.data.encode import field_codecs
    from mbp.generate import Sampling, generate
    from mbp.model.io import load_model
    from mbp.outdir import check_writable
    from mbp.plugins import get_platform
    from mbp.protocol import END, EOS, Segment, prompt_stream

    if prompt is not None and prompt_file is not None:
        raise ConfigError("give --prompt or --prompt-file, not both")
    for option, number in (("--temperature", temperature), ("--top-p", top_p)):
        if number is not None and not math.isfinite(number):  # click's ranges let nan and inf through
            raise ConfigError(f"{option} {number}: expected a finite number")
    if out_dir is not None:  # before generating: output that cannot be written would be lost
        check_writable(out_dir)
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"--prompt-file {prompt_file}: {error}") from None
    components = get_platform().components
    if open_codec not in components.names("codecs"):
        valid = ", ".join(components.names("codecs"))
        raise ConfigError(f"--codec {open_codec}: not a registered codec (valid: {valid})")
    model, document = load_model(checkpoint, components)
    try:
        pipeline = Pipeline.model_validate(document["pipeline"]) if "pipeline" in document else None
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in ("pipeline", *first["loc"]))
        raise CheckpointError(f"{checkpoint}/config.json: key {key}: {first['msg']}") from None
    segments: list[Segment] = []
    field_codec: dict[str, Codec] = {}
    if pipeline:  # the codecs training used, reading views included
        field_codec = field_codecs(pipeline, components, components.build("heads", pipeline.head.as_dict()))
    for setting in fields:
        name, sep, value = setting.partition("=")
        if not sep:
            raise ConfigError(f"--field {setting!r}: expected NAME=VALUE")
        ref = pipeline.fields.get(name) if pipeline else None
        if ref is None:
            known = ", ".join(pipeline.fields) if pipeline else "none (checkpoint has no pipeline)"
            raise ConfigError(f"--field {name}: not a field of the checkpoint's pipeline (fields: {known})")
        try:
            data = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode("utf-8")
        except OSError as error:
            raise ConfigError(f"--field {name}: cannot read {value[1:]}: {error.strerror}") from None
        try:
            segments.append(field_codec[name].encode(data))
        except CodecError as error:
            source = value[1:] if value.startswith("@") else "the value given"
            raise ConfigError(f"--field {name}: {source}: {error}") from None
    tokens = torch.as_tensor(
        prompt_stream(segments, open_codec, (prompt or "").encode("utf-8")).astype("int64")
    )
    decoder = textcodecs.getincrementaldecoder("utf-8")("replace")
    streaming = out_dir is None and open_codec == "text"
    if streaming and prompt:
        sys.stdout.write(prompt)

    def stream(row: int, token: int) -> None:
        if streaming and token < 256:
            sys.stdout.write(decoder.decode(bytes([token])))
            sys.stdout.flush()

    def codec_for(name: str) -> Codec:
        return components.build("codecs", {"type": name})

    sampling = Sampling(temperature, top_k, top_p, seed)
    stops = (END, EOS) if out_dir is None else (EOS,)
    generated = generate(
        model, [tokens], max_new=max_bytes, sampling=sampling, stop_tokens=stops, callback=stream
    )[0]
    if streaming:
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    if out_dir is not None:
        written = write_segments(tokens.tolist() + generated, len(fields), out_dir, codec_for, say)
        sys.stdout.write(json.dumps({"files": written}, indent=2) + "\n")
    else:
        say(f"generated {len(generated)} tokens")


COMMANDS = [generate_command]
