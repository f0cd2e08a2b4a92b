"""``mbp shards pack`` and ``mbp shards inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mbp.cli.common import emit_json, json_option, registry_option, say
from mbp.data.read import expand_shards
from mbp.data.skips import SkipLog
from mbp.data.write_shards import (
    drop_stale,
    pack,
    refuse_existing,
    samples_from_folder,
    samples_from_manifest,
)
from mbp.errors import ConfigError


@click.group("shards")
def shards_group() -> None:
    """Make and look into WebDataset tar shards."""


@shards_group.command("pack")
@click.argument("paths", nargs=-1, required=True, metavar="[SRC] OUT")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL (field -> text, or @path for a file relative to the manifest), or CSV with a header row "
    "of field names and the same values.",
)
@click.option(
    "--by-folder",
    "by_folder",
    is_flag=True,
    help="SRC holds one folder a class: write OUT/train-*.tar and OUT/eval-*.tar with fields image, audio "
    "or text (the file) and label (its folder's name).",
)
@click.option(
    "--eval-fraction",
    "eval_fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="--by-folder: share of each class held out for eval  [default: 0.1]",
)
@click.option("--seed", type=int, default=None, help="--by-folder: seed of the split  [default: 0]")
@click.option(
    "--maxcount", default=1000, show_default=True, type=click.IntRange(min=1), help="Samples per shard."
)
@click.option("--force", is_flag=True, help="Overwrite shards already there (and remove older ones).")
@json_option
def pack_command(
    paths: tuple[str, ...],
    manifest: Path | None,
    by_folder: bool,
    eval_fraction: float | None,
    seed: int | None,
    maxcount: int,
    force: bool,
    as_json: bool,
) -> None:
    """Pack SRC (files grouped by basename), --manifest FILE, or --by-folder SRC (a folder of class
    folders) into shards: OUT is a pattern such as out/train-%06d.tar, or for --by-folder a folder."""
    if by_folder:
        _pack_by_folder(paths, manifest, eval_fraction, seed, maxcount, force, as_json)
        return
    if eval_fraction is not None or seed is not None:
        raise ConfigError("--eval-fraction and --seed split a --by-folder pack; add --by-folder")
    if len(paths) > 2 or (len(paths) == 2) == (manifest is not None):
        raise ConfigError("give SRC_DIR OUT_PATTERN, or --manifest FILE OUT_PATTERN")
    src_dir, out_pattern = (Path(paths[0]) if len(paths) == 2 else None), paths[-1]
    existing = refuse_existing([out_pattern], force)
    samples = samples_from_manifest(manifest) if manifest else samples_from_folder(src_dir)  # type: ignore[arg-type]
    written, count = pack(samples, out_pattern, maxcount)
    drop_stale(existing, written)
    if as_json:
        emit_json({"shards": written, "samples": count})
    else:
        say(f"wrote {count} samples to {len(written)} shard(s): {', '.join(written)}")


def _pack_by_folder(
    paths: tuple[str, ...],
    manifest: Path | None,
    eval_fraction: float | None,
    seed: int | None,
    maxcount: int,
    force: bool,
    as_json: bool,
) -> None:
    from mbp.data.pack_folders import FolderPack, pack_by_folder

    if manifest is not None or len(paths) != 2:
        raise ConfigError("give --by-folder SRC OUT_DIR (SRC: a folder of class folders)")
    request = FolderPack(
        Path(paths[0]),
        Path(paths[1]),
        0.1 if eval_fraction is None else eval_fraction,
        0 if seed is None else seed,
        maxcount,
        force,
    )
    report = pack_by_folder(request)
    if as_json:
        emit_json(report)
        return
    counts, classes = report["samples"], report["classes"]
    say(
        f"packed {counts['train'] + counts['eval']} {report['kind']} samples of {len(classes)} classes "
        f"into {paths[1]}: {counts['train']} train in {len(report['train'])} shard(s), "
        f"{counts['eval']} eval in {len(report['eval'])} shard(s); {report['duplicates']} duplicate(s), "
        f"{report['skipped']} file(s) skipped"
    )


@shards_group.command("inspect")
@click.argument("shards", nargs=-1, required=True)
@click.option(
    "--pipeline",
    default=None,
    help="Also report encoded lengths, the rows and steps `mbp run` would train, and the data path's rate "
    "on this machine beside what a step takes.",
)
@registry_option
@json_option
def inspect_command(
    shards: tuple[str, ...], pipeline: str | None, registry_path: str | None, as_json: bool
) -> None:
    """Samples, fields (counts and sizes) and, with --pipeline, encoded lengths in tokens and what a run on
    these shards would train: rows and steps, given by the pipeline or planned from the samples."""
    from mbp.data.shard_summary import inspect_shards
    from mbp.planning.plan import preview
    from mbp.plugins import get_platform
    from mbp.resolve import resolve

    resolved = resolve(registry_path, pipeline, components=get_platform().components) if pipeline else None
    expanded = expand_shards(shards)
    # warnings go to stderr in --json mode too: stdout holds the JSON document alone
    report = inspect_shards(expanded, resolved.encoder if resolved else None, SkipLog())
    if resolved is not None and report["samples"]:
        report["run"] = preview(resolved, expanded)
    if as_json:
        emit_json(report)
        return
    for shard in report["shards"]:
        click.echo(f"{shard['path']}: {shard['samples']} samples")
    for name, stats in report["fields"].items():
        click.echo(f"  field {name}: {stats['count']} x, {stats['bytes']} bytes")
    if report.get("tokens"):
        t = report["tokens"]
        click.echo(f"  tokens per sample: min {t['min']}, median {t['median']:.0f}, max {t['max']}")
    if report.get("run"):
        click.echo(f"  mbp run would train: {report['run']['describe']}")
        if rate := report["run"].get("data_path"):
            click.echo(f"  data path on this machine: {_describe_rate(rate)}")
        if patches := report["run"].get("sample_patches"):
            click.echo(f"  byte-level patches of the first sample: {' | '.join(patches)}")
    click.echo(f"  samples skipped: {report['samples_skipped']}, shards failed: {report['shards_failed']}")
    if report["failed_shards"]:
        click.echo(f"  failed: {', '.join(report['failed_shards'])}")


def _describe_rate(rate: dict[str, Any]) -> str:
    """The training stream's timed rate, and what a step takes where it was measured."""
    stream = "shuffled and varied as training reads them" if rate["augmented"] else "shuffled, not varied"
    line = (
        f"{rate['samples_per_s']:,g} encoded samples/s, {rate['mb_per_s']:g} MB/s of tokens "
        f"(the first {rate['samples']} training samples, {stream})"
    )
    if "step_samples_per_s" in rate:
        line += f"; a step takes {rate['step_samples_per_s']:,g} samples/s"
    return line


COMMANDS = [shards_group]
