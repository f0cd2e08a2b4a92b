"""``mbp generate``: continue a prompt with a trained checkpoint; text streams to stdout, other segments
are written through their codecs with ``--out``."""

from __future__ import annotations

import codecs as textcodecs
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mbp.cli.common import say
from mbp.errors import ConfigError

if TYPE_CHECKING:
    from mbp.prompting import FieldValue


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
    """Generate bytes from a checkpoint written by `mbp run` (or a run folder: its best, else its last)."""
    from mbp.loaded import load
    from mbp.outdir import check_writable
    from mbp.plugins import get_platform
    from mbp.prompting import check_codec, check_field, sampling_of
    from mbp.segment_files import write_segments

    prompt = _prompt_text(prompt, prompt_file)
    sampling_of(temperature, top_k, top_p, seed, flag="--")
    if out_dir is not None:  # before generating: output that cannot be written would be lost
        check_writable(out_dir)
    components = get_platform().components
    check_codec(open_codec, components, flag="--")
    loaded = load(checkpoint)
    values = [
        _field_value(setting, lambda name: check_field(loaded.resolved, name, flag="--"))
        for setting in fields
    ]
    shown = _TextStream(out_dir is None and open_codec == "text", prompt or "")
    continued = loaded.continuation(
        prompt or "",
        fields=values,
        codec=open_codec,
        max_bytes=max_bytes,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        whole_sample=out_dir is not None,
        on_token=shown.write,
        flag="--",
    )
    shown.close()
    if out_dir is None:
        say(f"generated {len(continued.generated)} tokens")
        return
    written = write_segments(
        continued.tokens, len(fields), out_dir, lambda name: components.build("codecs", {"type": name}), say
    )
    sys.stdout.write(json.dumps({"files": written}, indent=2) + "\n")


def _prompt_text(prompt: str | None, prompt_file: Path | None) -> str | None:
    """The prompt ``--prompt`` gives, or ``--prompt-file``'s UTF-8 text (ConfigError naming the file)."""
    if prompt is not None and prompt_file is not None:
        raise ConfigError("give --prompt or --prompt-file, not both")
    if prompt_file is None:
        return prompt
    try:
        return prompt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--prompt-file {prompt_file}: {error}") from None


class _TextStream:
    """Generated text written to stdout as it comes (after the prompt), where ``shown``; else nothing."""

    def __init__(self, shown: bool, prompt: str) -> None:
        self.shown = shown
        self.decoder = textcodecs.getincrementaldecoder("utf-8")("replace")
        if shown and prompt:
            sys.stdout.write(prompt)

    def write(self, token: int) -> None:
        if self.shown and token < 256:
            sys.stdout.write(self.decoder.decode(bytes([token])))
            sys.stdout.flush()

    def close(self) -> None:
        if self.shown:
            sys.stdout.write(self.decoder.decode(b"", final=True) + "\n")


def _field_value(setting: str, check: Callable[[str], None]) -> FieldValue:
    """``--field NAME=VALUE``: VALUE as UTF-8 text, or ``@PATH``'s bytes."""
    from mbp.prompting import FieldValue

    name, sep, value = setting.partition("=")
    if not sep:
        raise ConfigError(f"--field {setting!r}: expected NAME=VALUE")
    check(name)
    if not value.startswith("@"):
        return FieldValue(name, value.encode("utf-8"))
    try:
        return FieldValue(name, Path(value[1:]).read_bytes(), value[1:])
    except OSError as error:
        raise ConfigError(f"--field {name}: cannot read {value[1:]}: {error.strerror}") from None


COMMANDS = [generate_command]
