"""Build the real-data suite: shards, baselines and an mbp registry, in one deterministic run.

    python -m benchmarks.realdata.build [--out DIR] [--only NAME ...]

Writes DIR/<set>/{train,eval}-NNNNNN.tar, DIR/<set>/baseline.json, DIR/summary.json and
DIR/registry.yaml (benchmarks/realdata/registry.yaml with its shard paths pointed at DIR). Installs
nothing: a missing Debian or PyPI package stops the build with its name before anything is written.
Each set's module docstring (images.py, speech.py, text.py) says where its data come from and how
train and held-out are kept apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.realdata import baselines, images, mixed, speech, text
from benchmarks.realdata.shards import (
    BuiltSet,
    MissingPrerequisiteError,
    require_command,
    require_path,
    write_set,
)

DEFAULT_OUT = Path("/work/realdata")
TEMPLATE = Path(__file__).with_name("registry.yaml")
TEMPLATE_ROOT = "/work/realdata"

BUILDERS: dict[str, Callable[[], BuiltSet]] = {
    "image-digits": images.build_digits,
    "image-glyphs": images.build_glyphs,
    "image-letters": images.build_letters,
    "image-lowercase": images.build_lowercase,
    "speech-digits": lambda: speech.build_digits(baselines.log_mel_features),
    "speech-commands": lambda: speech.build_commands(baselines.log_mel_features),
    "speech-letters": lambda: speech.build_letters(baselines.log_mel_features),
    "mixed-digits": lambda: mixed.build_digits(baselines.log_mel_features),
    "mixed-letters": lambda: mixed.build_letters(baselines.log_mel_features),
    "text-fortunes": text.build_fortunes,
    "text-kjv": text.build_kjv,
    "text-changelogs": text.build_changelogs,
    "text-python": text.build_python,
    "text-python-all": text.build_python_all,
    "text-manpages-de": text.build_manpages_de,
}
PIPELINES = {
    "image-digits": "real-digits-pixels, real-digits-png",
    "image-glyphs": "real-glyphs-pixels, real-glyphs-png",
    "image-letters": "real-letters-pixels",
    "image-lowercase": "real-lowercase-pixels",
    "speech-digits": "real-speech-digits",
    "speech-commands": "real-speech-commands",
    "speech-letters": "real-speech-letters",
    "mixed-digits": "real-mixed-digits",
    "mixed-letters": "real-mixed-letters",
    "text-fortunes": "real-text-fortunes",
    "text-kjv": "real-text-kjv, real-text-kjv-defaults",
    "text-changelogs": "real-text-changelogs",
    "text-python": "real-text-python",
    "text-python-all": "real-text-python-all",
    "text-manpages-de": "real-text-manpages-de",
}


def check_prerequisites(names: list[str]) -> list[str]:
    """Every missing package, named, before any work is done."""
    missing: list[str] = []
    checks: list[Callable[[], object]] = []
    if any(n.startswith(("image", "speech", "mixed")) for n in names):
        checks.append(lambda: __import__("sklearn"))
    if {"image-glyphs", "image-letters", "image-lowercase", "mixed-letters"} & set(names):
        checks += [
            lambda: require_path(Path("/usr/share/fonts/truetype/liberation"), "fonts-liberation"),
            lambda: require_path(Path("/usr/share/fonts/opentype/urw-base35"), "fonts-urw-base35"),
        ]
    if any(n.startswith(("speech", "mixed")) for n in names):
        checks.append(lambda: require_command("espeak-ng", "espeak-ng"))
    if "speech-commands" in names:
        checks.append(lambda: require_command("flite", "flite"))
    if "text-fortunes" in names:
        checks.append(lambda: require_path(text.FORTUNE_DIR / "computers", "fortunes"))
    if "text-kjv" in names:
        checks += [
            lambda: require_command("bible", "bible-kjv"),
            lambda: require_path(Path("/usr/lib/bible.data"), "bible-kjv-text"),
        ]
    for check in checks:
        try:
            check()
        except MissingPrerequisiteError as error:
            missing.append(str(error))
        except ImportError:
            missing.append("scikit-learn not installed: pip install -e '.[bench]'")
    return missing


def write_registry(out: Path) -> Path:
    target = out / "registry.yaml"
    target.write_text(TEMPLATE.read_text().replace(TEMPLATE_ROOT, str(out)))
    return target


def row(built: BuiltSet, result: dict[str, object], seconds: float) -> dict[str, object]:
    if built.task == "text":
        score = f"gzip {result['gzip_bpb']:.3f} / xz {result['xz_bpb']:.3f} bpb"
        train_size = f"{len(built.train)} docs, {sum(len(s.fields['txt']) for s in built.train) / 1e6:.2f} MB"
        held_size = f"{len(built.held_out)} docs, {len(built.text_held_out) / 1e3:.0f} KB"
    else:
        score = f"logreg {result['accuracy']:.3f} (majority {result['majority_baseline']:.3f})"
        train_size, held_size = str(len(built.train)), str(len(built.held_out))
    return {
        "set": built.name,
        "train": train_size,
        "held_out": held_size,
        "baseline": score,
        "pipelines": PIPELINES[built.name],
        "seconds": round(seconds, 1),
    }


def print_table(rows: list[dict[str, object]]) -> None:
    columns = ["set", "train", "held_out", "baseline", "seconds"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.realdata.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"build folder (default {DEFAULT_OUT})")
    parser.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="build only these sets")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    names = args.only or list(BUILDERS)
    missing = check_prerequisites(names)
    if missing:
        for line in missing:
            print(f"realdata: missing: {line}", file=sys.stderr)
        print("realdata: see benchmarks/realdata/README.md for the packages the suite needs", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary: dict[str, object] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    rows: list[dict[str, object]] = []
    start = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        try:
            built = BUILDERS[name]()
        except MissingPrerequisiteError as error:
            print(f"realdata: missing: {error}", file=sys.stderr)
            return 2
        folder = write_set(out, built)
        result = baselines.baseline(built)
        record = {
            "set": built.name,
            "task": built.task,
            "source": built.source,
            "split_rule": built.split_rule,
            "train_samples": len(built.train),
            "held_out_samples": len(built.held_out),
            "pipelines": PIPELINES[name].split(", "),
            "baseline": result,
            **built.extra,
        }
        (folder / "baseline.json").write_text(json.dumps(record, indent=2) + "\n")
        summary[name] = record
        rows.append(row(built, result, time.perf_counter() - began))
        print(f"realdata: {name} written to {folder} ({rows[-1]['seconds']} s)", file=sys.stderr)
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    registry = write_registry(out)
    print_table(rows)
    print(f"shards: {out}/<set>/{{train,eval}}-*.tar   baselines: {out}/<set>/baseline.json, {summary_path}")
    print(f"registry: {registry}   e.g. mbp run real-digits-pixels --registry {registry}")
    print(f"built in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
