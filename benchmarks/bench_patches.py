"""Do patches that follow the data beat fixed ones? A registry pipeline run as a user runs it (its
defaults, ``train.minutes`` given, one seed), once with fixed byte-level patches and once with the
boundaries its codecs declare, alternating which goes first round by round, on the same machine.

The fixed arm sets the last stage's ``patch`` (``--fixed 8``, or ``--fixed row``: the row of the
probed samples where every field has one length, else 8); the ``codecs`` arm (named ``boundaries``)
leaves it unset and sets ``model.boundaries: codecs``, so the run plans its boundary rules
(``mbp.planning.boundary_plan``); ``--entropy`` adds an arm with ``model.boundaries: entropy`` (text
patches where a byte model trained in the run is uncertain). ``--explicit`` passes the planned codec
rules through ``--set model.boundaries=...`` instead. Prints each arm's held-out bits per byte
(``loss_bpb``) and accuracy where the head reports one, and each arm's ratios to the fixed arm (bits per
byte under 1 and accuracy over 1 favour the arm), in ``summary`` as ``<metric>_ratio`` for the
boundaries arm and ``entropy_<metric>_ratio`` for the entropy arm.

Differences between arms on the small labelled sets are the size of the seed-to-seed spread, so
``--seeds 0 1 2 ...`` runs one round per seed and adds ``summary.paired``: per metric, the mean of each
arm's difference from the fixed arm at the same seed, its 95% interval and the count of seeds it was
better and worse at. ``answer_bits`` (an answer head's held-out bits per answer) moves less from seed to
seed than accuracy.

Run: python -m benchmarks.bench_patches PIPELINE [--registry FILE] [--minutes 9] [--rounds 1 | --seeds S ...]
    [--entropy]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import save

METRICS = ("loss_bpb", "accuracy", "answer_bits")
HIGHER_IS_BETTER = ("accuracy",)
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 11: 2.20}
"""Student's t at 97.5% by degrees of freedom, for the paired differences' 95% interval (1.96 past 11)."""


def resolved_pipeline(name: str, registry: str | None) -> Any:
    from mbp.plugins import get_platform
    from mbp.resolve import resolve

    return resolve(registry, name, components=get_platform().components)


def byte_stage(resolved: Any) -> int:
    """The index of the byte-level stage, for ``--set model.stages.N.patch``."""
    return len(resolved.pipeline.model.stages) - 1


def fixed_patch(resolved: Any, shards: list[str], fixed: str) -> int:
    """``fixed`` as a number; ``row``: the probed samples' one row length as a patch, else 8."""
    if fixed != "row":
        return int(fixed)
    from mbp.planning.boundary_plan import row_patch
    from mbp.planning.constants import DEFAULT_PATCH
    from mbp.planning.patch_plan import PROBE_SAMPLES, field_rows
    from mbp.planning.probe import Probe

    rows = field_rows(resolved, Probe(shards).samples(resolved, PROBE_SAMPLES))
    return row_patch(next(iter(rows))) if len(rows) == 1 else DEFAULT_PATCH


def explicit_rules(resolved: Any, shards: list[str]) -> list[str]:
    """``--set`` settings that give the run the rules a run would plan for ``resolved``."""
    from mbp.config.boundary_rules import to_config
    from mbp.planning.boundary_plan import with_planned_boundaries
    from mbp.planning.probe import Probe

    model = resolved.pipeline.model
    unset = model.model_copy(
        update={"stages": [*model.stages[:-1], model.stages[-1].model_copy(update={"patch": None})]}
    )
    pipeline = resolved.pipeline.model_copy(update={"model": unset})
    _, plan = with_planned_boundaries(resolved.with_encoding(pipeline), Probe(shards))
    if plan is None:
        raise SystemExit("bench_patches: the pipeline's model has one stage: no byte-level patch to place")
    rules = {codec: to_config(rule).model_dump() for codec, rule in plan.rules.items()}
    return [
        f"model.boundaries={json.dumps(rules)}",
        f"model.stages.{byte_stage(resolved)}.patch={plan.longest}",
    ]


def run_arm(args: argparse.Namespace, settings: list[str], out: Path, seed: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "mbp.cli",
        "run",
        args.pipeline,
        "--out",
        str(out),
        "--json",
        "--overwrite",
    ]
    command += ["--registry", args.registry] if args.registry else []
    for setting in [f"train.minutes={args.minutes}", f"train.seed={seed}", *args.set, *settings]:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench_patches: {' '.join(command)} failed: {done.stderr.strip()[-400:]}")
    summary = json.loads(done.stdout)
    first = next((line for line in done.stderr.splitlines() if line.strip()), "")
    kept = {  # and the task metric per set of present fields, where a mixed pipeline reports one
        key: value
        for key, value in summary["metrics"].items()
        if key in METRICS or key.startswith("accuracy[")
    }
    return {"metrics": kept, "steps": summary["steps"], "first_line": first}


def one_round(
    args: argparse.Namespace, arms: dict[str, list[str]], index: int, seed: int, work: Path
) -> dict[str, Any]:
    order = list(arms) if index % 2 == 0 else list(reversed(arms))
    row: dict[str, Any] = {"seed": seed}
    row.update({name: run_arm(args, arms[name], work / f"{name}-{index}", seed) for name in order})
    for name, key in itertools.product(arms, METRICS):
        fixed, other = row["fixed"]["metrics"].get(key), row[name]["metrics"].get(key)
        if name != "fixed" and fixed and other is not None:  # no ratio to a fixed arm that scored 0
            row[ratio_name(name, key)] = other / fixed
    return row


def paired(rounds: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """Per metric (and per modality's accuracy), ``arm`` minus the fixed arm over rounds of the same
    seed: the mean difference, its 95% interval (Student's t) and in how many rounds ``arm`` was
    better, worse or equal."""
    out: dict[str, Any] = {}
    for key in rounds[0]["fixed"]["metrics"]:
        pairs = [(r[arm]["metrics"].get(key), r["fixed"]["metrics"][key]) for r in rounds]
        diffs = [a - b for a, b in pairs if a is not None]
        if len(diffs) < 2:
            continue
        sign = 1 if key in HIGHER_IS_BETTER or key.startswith("accuracy[") else -1
        half = T_975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / len(diffs) ** 0.5
        mean = statistics.mean(diffs)
        out[key] = {
            "mean_difference": mean,
            "interval_95": [mean - half, mean + half],
            "better": sum(sign * d > 0 for d in diffs),
            "worse": sum(sign * d < 0 for d in diffs),
            "equal": sum(d == 0 for d in diffs),
        }
    return out


def ratio_name(arm: str, metric: str) -> str:
    return f"{metric}_ratio" if arm == "boundaries" else f"{arm}_{metric}_ratio"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_patches", description=__doc__.split("\n")[0]
    )
    parser.add_argument("pipeline")
    parser.add_argument("--registry", default=None)
    parser.add_argument("--minutes", type=float, default=9.0, help="train.minutes of each run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="one round per seed, with paired differences"
    )
    parser.add_argument("--fixed", default="8", help="the fixed arm's patch: a number, or row")
    parser.add_argument("--explicit", action="store_true", help="pass the planned rules by --set")
    parser.add_argument("--entropy", action="store_true", help="add an arm with model.boundaries: entropy")
    parser.add_argument("--set", action="append", default=[], help="a further --set for both arms")
    parser.add_argument("--keep", type=Path, default=None, help="keep each run's folder (metrics, plot) here")
    args = parser.parse_args()
    resolved = resolved_pipeline(args.pipeline, args.registry)
    shards = resolved.pipeline.data.train_shards
    from mbp.data.read import expand_shards

    shards = expand_shards(shards)
    stage = byte_stage(resolved)
    arms = {
        "fixed": [f"model.stages.{stage}.patch={fixed_patch(resolved, shards, args.fixed)}"],
        "boundaries": explicit_rules(resolved, shards)
        if args.explicit
        else [f"model.stages.{stage}.patch=null", "model.boundaries=codecs"],
    }
    if args.entropy:
        arms["entropy"] = [f"model.stages.{stage}.patch=null", "model.boundaries=entropy"]
    with tempfile.TemporaryDirectory(prefix="bench_patches-") as temporary:
        work = args.keep or Path(temporary)
        seeds = args.seeds or [args.seed] * args.rounds
        rounds = [one_round(args, arms, index, seed, work) for index, seed in enumerate(seeds)]
    names = [ratio_name(arm, key) for arm, key in itertools.product(arms, METRICS) if arm != "fixed"]
    summary = {
        name: statistics.median(r[name] for r in rounds) for name in names if all(name in r for r in rounds)
    }
    if args.seeds:
        summary["paired"] = {arm: paired(rounds, arm) for arm in arms if arm != "fixed"}
    save(
        f"bench_patches_{args.pipeline}",
        {"pipeline": args.pipeline, "arms": arms, "summary": summary, "rounds": rounds},
    )


if __name__ == "__main__":
    main()
