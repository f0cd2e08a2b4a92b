"""``mbp.run``: train and evaluate a pipeline from Python, as ``mbp run`` does (which calls it).

Example::

    import mbp

    summary = mbp.run("vqa-mixed", ["train-*.tar"], out="runs/x", eval_shards=["eval-*.tar"],
                      settings={"train.steps": 50})
    print(summary["metrics"]["accuracy"], summary["checkpoint"])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:
    from mbp.resolve import Resolved
    from mbp.train.rundir import RunRequest

Settings = Mapping[str, object] | Sequence[str]
"""Pipeline overrides by dotted path: values by key (``{"train.steps": 50}``), or ``KEY=VALUE`` strings
whose values are YAML, as ``mbp run --set`` takes them."""


class BestCheckpoint(TypedDict):
    metric: str
    value: float
    step: int
    checkpoint: str


class RunSummary(TypedDict, total=False):
    """What ``mbp run --json`` prints. Every run has the keys up to ``best``; the plans appear where
    the run made them."""

    pipeline: str
    steps: int
    samples_seen: int
    samples_skipped: int
    failed_shards: list[str]
    metrics: dict[str, Any]
    """The last evaluation's metrics (``eval_bpb``, ``loss_bpb``, the head's own); empty without one."""
    checkpoint: str | None
    metrics_file: str
    plot: str | None
    precision: str
    best: BestCheckpoint | None
    """The checkpoint kept for the best held-out metric (``checkpoints/best``), if any was evaluated."""
    row_plan: dict[str, Any]
    variation: dict[str, Any]
    step_plan: dict[str, Any]


def run(
    pipeline: str | None = None,
    shards: Sequence[str | Path] = (),
    *,
    out: str | Path | None = None,
    eval_shards: Sequence[str | Path] = (),
    settings: Settings | None = None,
    registry: str | Path | None = None,
    resume: bool = False,
    resume_intact: bool = False,
    init_from: str | Path | None = None,
    overwrite: bool = False,
) -> RunSummary:
    """Train and evaluate ``pipeline`` (default: the registry's) on ``shards`` (default: its
    ``data.train_shards``) into ``out`` (default: ``mbp-runs/PIPELINE``); return the run's summary.

    Args:
        eval_shards: held-out shards (default: ``data.eval_shards``).
        settings: pipeline overrides by dotted path.
        registry: the registry file (default: the one shipped with mbp).
        resume: continue the run in ``out`` from its last checkpoint.
        resume_intact: resume; if the newest checkpoint is damaged, from the newest intact one.
        init_from: a checkpoint whose weights the model starts from (fresh optimizer and schedule).
        overwrite: replace the run already in ``out``.

    Raises :class:`mbp.MbpError` with one line naming the culprit on bad input.

    Example::

        summary = mbp.run("vqa-mixed", out="runs/demo", settings={"train.steps": 20})  # bundled shards
    """
    from mbp.errors import ConfigError
    from mbp.outdir import refuse_unsafe_output
    from mbp.train.distributed import speaks_for_run
    from mbp.train.loop import run as train
    from mbp.train.outlock import holding

    if init_from is not None and resume:
        raise ConfigError("give --init-from (start from a checkpoint's weights) or --resume, not both")
    resolved = resolved_with(pipeline, registry, setting_lines(settings))
    out_dir = Path(out) if out is not None else Path("mbp-runs") / resolved.name
    request = _request(resolved, out_dir, shards, eval_shards, resume, resume_intact, init_from, overwrite)
    if overwrite:
        refuse_unsafe_output(out_dir, "--out")
    # under torchrun, rank 0 holds the folder
    with holding(out_dir) if speaks_for_run() else nullcontext():
        return cast(RunSummary, train(resolved, request))


def _request(
    resolved: Resolved,
    out_dir: Path,
    shards: Sequence[str | Path],
    eval_shards: Sequence[str | Path],
    resume: bool,
    resume_intact: bool,
    init_from: str | Path | None,
    overwrite: bool,
) -> RunRequest:
    """What ``run`` asks of the training loop: ``run``'s arguments with the pipeline's defaults filled in."""
    from mbp.train.rundir import RunRequest

    train_shards, evals = shard_lists(resolved, shards, eval_shards)
    return RunRequest(
        out_dir,
        train_shards,
        evals,
        resume=resume or resume_intact,
        init_from=Path(init_from) if init_from is not None else None,
        overwrite=overwrite,
        take_intact=resume_intact,
    )


def resolved_with(pipeline: str | None, registry: str | Path | None, overrides: list[str]) -> Resolved:
    """``pipeline`` from ``registry`` (default: the shipped one) with ``overrides`` applied, resolved
    against the installed plugins."""
    from mbp.api import load_components
    from mbp.overrides import apply_overrides
    from mbp.resolve import resolve

    components = load_components()
    registry_path = str(registry) if registry is not None else None
    base = resolve(registry_path, pipeline, components=components)
    if not overrides:
        return base
    return resolve(registry_path, base.name, apply_overrides(base, overrides), components=components)


def shard_lists(
    resolved: Resolved, shards: Sequence[str | Path], eval_shards: Sequence[str | Path]
) -> tuple[list[str], list[str]]:
    """The training and held-out shards: those given, else the pipeline's. Shards from the config may
    name no command unless the user allows it (``MBP_ALLOW_PIPE=1``)."""
    from mbp.data.read import expand_shards
    from mbp.errors import ConfigError

    data = resolved.pipeline.data
    train_shards = expand_shards([str(s) for s in shards]) or expand_shards(
        data.train_shards, origin="data.train_shards"
    )
    if not train_shards:
        raise ConfigError(
            f"pipeline '{resolved.name}' names no train shards: pass SHARDS or set data.train_shards"
        )
    evals = expand_shards([str(s) for s in eval_shards]) or expand_shards(
        data.eval_shards, origin="data.eval_shards"
    )
    return train_shards, evals


def setting_lines(settings: Settings | None) -> list[str]:
    """``settings`` as ``KEY=VALUE`` lines; a value given as an object is written as JSON, which YAML
    reads back as the same value."""
    if settings is None:
        return []
    if isinstance(settings, str):
        return [settings]
    if isinstance(settings, Mapping):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in settings.items()]
    return list(settings)
