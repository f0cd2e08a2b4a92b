"""``mbp run`` and ``mbp eval``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mbp.cli.common import emit_json, json_option, registry_option, say

if TYPE_CHECKING:
    from mbp.running import RunSummary


@click.command("run")
@click.argument("pipeline", required=False)
@click.argument("shards", nargs=-1)
@registry_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: mbp-runs/PIPELINE).",
)
@click.option("--steps", type=click.IntRange(min=0), default=None, help="Override train.steps.")
@click.option(
    "--eval-shards", "eval_shards", multiple=True, help="Held-out shards (default: data.eval_shards)."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline field by dotted path."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the last checkpoint in --out. A setting that changes how the run trains "
    "(data.batch_size, data.seq_len, train.lr...) may differ from the checkpoint's: a warning names "
    "each, old -> new, and the resume is no longer exact. More --steps extend the run; fewer than "
    "the checkpoint's step are an error.",
)
@click.option(
    "--init-from",
    "init_from",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Start from this checkpoint's weights (fresh optimizer, schedule and data position).",
)
@click.option(
    "--resume-intact",
    "take_intact",
    is_flag=True,
    help="Resume; if the newest checkpoint is damaged, continue from the newest intact one.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace the run already in --out (its checkpoints, metrics)."
)
@json_option
def run_command(
    pipeline: str | None,
    shards: tuple[str, ...],
    registry_path: str | None,
    out_dir: Path | None,
    steps: int | None,
    eval_shards: tuple[str, ...],
    overrides: tuple[str, ...],
    resume: bool,
    init_from: Path | None,
    take_intact: bool,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train and evaluate PIPELINE (default: the registry's) on SHARDS (default: data.train_shards)."""
    from mbp.running import run
    from mbp.train.distributed import speaks_for_run

    settings = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    summary = run(
        pipeline,
        shards,
        out=out_dir,
        eval_shards=eval_shards,
        settings=settings,
        registry=registry_path,
        resume=resume,
        resume_intact=take_intact,
        init_from=init_from,
        overwrite=overwrite,
    )
    if not speaks_for_run():
        return  # under torchrun, rank 0 speaks for the run
    if as_json:
        emit_json(summary)
    else:
        _say_summary(summary)


def _say_summary(summary: RunSummary) -> None:
    """The finished run's lines: steps and samples, held-out metrics, and where its files are."""
    m = summary["metrics"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
    failed = summary["failed_shards"]
    damaged = f", {len(failed)} shard(s) damaged ({', '.join(failed)})" if failed else ""
    say(
        f"done: {summary['steps']} steps, {summary['samples_seen']} samples seen, "
        f"{summary['samples_skipped']} skipped{damaged}"
    )
    if shown:
        say(f"eval: {shown}")
    say(f"metrics: {summary['metrics_file']}")
    if summary["plot"]:
        say(f"plot: {summary['plot']}")
    say(f"checkpoint: {summary['checkpoint']}")
    best = summary.get("best")
    if best:
        say(f"best: {best['checkpoint']} ({best['metric']} {best['value']:.4f} at step {best['step']})")


@click.command("eval")
@click.argument("pipeline")
@click.argument("shards", nargs=-1, required=True)
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(file_okay=False, path_type=Path))
@registry_option
@json_option
def eval_command(
    pipeline: str, shards: tuple[str, ...], checkpoint: Path, registry_path: str | None, as_json: bool
) -> None:
    """Evaluate a checkpoint on SHARDS with PIPELINE's task head."""
    from mbp.loaded import load

    loaded = load(checkpoint, pipeline=pipeline, registry=registry_path)
    evaluation = loaded.evaluate(shards)  # warnings go to stderr, --json or not: stdout holds only JSON
    metrics = evaluation.metrics
    document = {
        "pipeline": loaded.pipeline_name,
        "checkpoint": str(checkpoint),
        "metrics": metrics,
        **evaluation.skips,
    }
    if as_json:
        emit_json(document)
    else:
        for key, value in metrics.items():
            click.echo(f"{key}: {value}")


COMMANDS = [run_command, eval_command]
