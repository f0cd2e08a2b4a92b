"""Run the real-data suite's pipelines with mbp's defaults and set each against its classical baseline.

    python -m benchmarks.realdata.run_suite [--data DIR] [--out DIR] [PIPELINE ...]

Each pipeline runs as a user would run it (``mbp run NAME --registry DIR/registry.yaml``); its wall time
includes evaluation. Results go to benchmarks/results/realdata.json (merged with earlier results, one
entry a pipeline), each run's plot to benchmarks/results/realdata/NAME.png, and a Markdown table of all
results to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"


def baseline_of(data: Path, pipeline: str) -> tuple[str, dict[str, Any]]:
    summary = json.loads((data / "summary.json").read_text())
    for name, entry in summary.items():
        if pipeline in entry["pipelines"]:
            return name, entry["baseline"]
    raise SystemExit(f"run_suite: {pipeline} is in no set of {data / 'summary.json'}")


def target(baseline: dict[str, Any], pipeline: str) -> tuple[str, float, str]:
    """The issue's target for a pipeline: (metric, bound, 'min' or 'max')."""
    if "xz_bpb" in baseline:
        return "eval_bpb", 0.8 * baseline["xz_bpb"], "max"
    bound = baseline["accuracy"] * (0.5 if pipeline.endswith("-png") else 1.0)
    if "speech" in pipeline:
        bound = 0.8
    return "accuracy", bound, "min"


def run_one(data: Path, out: Path, pipeline: str, seed: int = 0) -> dict[str, Any]:
    folder = out / result_key(pipeline, seed)
    shutil.rmtree(folder, ignore_errors=True)
    command = [
        "mbp",
        "run",
        pipeline,
        "--registry",
        str(data / "registry.yaml"),
        "--out",
        str(folder),
        "--json",
        *(["--set", f"train.seed={seed}"] if seed else []),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    if done.returncode != 0:
        return {"pipeline": pipeline, "error": done.stderr.strip().splitlines()[-1:], "minutes": minutes}
    summary = json.loads(done.stdout)
    metrics = summary["metrics"]
    set_name, baseline = baseline_of(data, pipeline)
    metric, bound, kind = target(baseline, pipeline)
    value = metrics.get(metric)
    met = value is not None and (value >= bound if kind == "min" else value <= bound)
    plot = RESULTS / "realdata" / f"{result_key(pipeline, seed)}.png"
    if summary.get("plot"):
        plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(summary["plot"], plot)
    return {
        "pipeline": pipeline,
        "seed": seed,
        "set": set_name,
        "baseline": baseline,
        "metric": metric,
        "value": value,
        "target": bound,
        "met": met,
        "steps": summary["steps"],
        "minutes": round(minutes, 2),
        "best": summary.get("best"),
        "precision": summary.get("precision"),
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
        "plot": str(plot.relative_to(RESULTS.parents[1])),  # from the repository root, as BENCHMARKS.md links
    }


def result_key(pipeline: str, seed: int) -> str:
    """Seed 0 (the default) under the pipeline's name, other seeds beside it."""
    return pipeline if seed == 0 else f"{pipeline}@seed{seed}"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| pipeline | baseline | mbp | target | met | steps | minutes | plot |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | | error: {r['error']} | | no | | {r['minutes']:.1f} | |")
            continue
        b = r["baseline"]
        base = f"xz {b['xz_bpb']:.3f} bpb" if "xz_bpb" in b else f"logreg {b['accuracy']:.3f}"
        shown = f"{r['metric']} {r['value']:.3f}"
        bound = ("<= " if r["metric"] == "eval_bpb" else ">= ") + f"{r['target']:.3f}"
        met = "yes" if r["met"] else "no"
        minutes, plot = f"{r['minutes']:.1f}", f"[plot]({r['plot']})"
        cells = [name, base, shown, bound, met, str(r["steps"]), minutes, plot]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/realdata"))
    parser.add_argument("--out", type=Path, default=Path("mbp-runs/realdata"))
    parser.add_argument("--seed", type=int, default=0, help="train.seed (results kept per seed)")
    parser.add_argument("pipelines", nargs="*")
    args = parser.parse_args()
    summary = json.loads((args.data / "summary.json").read_text())
    names = args.pipelines or [p for entry in summary.values() for p in entry["pipelines"]]
    path = RESULTS / "realdata.json"
    for name in names:
        print(f"run_suite: {name} ...", file=sys.stderr, flush=True)
        result = run_one(args.data, args.out, name, args.seed)
        # re-read before writing: another runner may have added its pipelines meanwhile
        results: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
        results[result_key(name, args.seed)] = result
        path.write_text(json.dumps(results, indent=2) + "\n")  # after each run: nothing lost on a kill
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
