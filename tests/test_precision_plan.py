"""Issue 13: ``train.precision: auto`` is settled by timing the run's own step in both precisions where the
hardware offers bf16, and a resumed run keeps what its start chose. Timings are injected: the decision
is under test, not this machine's speed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mbp.planning import precision_plan
from mbp.planning.precision_plan import CLEARLY_FASTER, ROUNDS, plan_precision
from mbp.planning.recorded import recorded_precision
from mbp.plugins import get_platform
from mbp.resolve import Resolved, resolve
from mbp.train import precision as policy

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar

CPU = torch.device("cpu")


def timed(monkeypatch: pytest.MonkeyPatch, bf16: float, fp32: float) -> list[str]:
    """Steps take ``bf16`` / ``fp32`` seconds; returns the precisions timed, in order."""
    calls: list[str] = []

    def step_seconds(resolved: Resolved, batches: list, device: torch.device) -> float:
        precision = resolved.pipeline.train.precision
        calls.append(precision)
        return bf16 if precision == "bf16" else fp32

    monkeypatch.setattr(precision_plan, "step_seconds", step_seconds)
    return calls


def qa(tmp_path: Path, precision: str = "auto") -> Resolved:
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    resolved = resolve(str(tmp_path / "registry.yaml"), "qa", components=get_platform().components)
    return precision_plan.with_precision(resolved, precision)


def test_the_cpu_flags_are_mbp_cpu_flags_where_it_is_set_and_linuxs_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MBP_CPU_FLAGS", " avx2  amx_bf16 ")
    assert policy.cpu_flags() == {"avx2", "amx_bf16"} and policy.cpu_has_fast_bf16()
    told = "auto: this CPU has AMX or AVX512-BF16 (as MBP_CPU_FLAGS says)"
    assert policy.choose_precision("auto", CPU).reason == told
    monkeypatch.setenv("MBP_CPU_FLAGS", "")  # set and empty: a CPU with no flags, whatever Linux reports
    assert policy.cpu_flags() == frozenset() and policy.choose_precision("auto", CPU).precision == "fp32"
    monkeypatch.delenv("MBP_CPU_FLAGS")
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    reported = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    assert policy.cpu_flags() == frozenset(reported)
    assert "MBP_CPU_FLAGS" not in policy.choose_precision("auto", CPU).reason


def test_auto_keeps_bf16_only_where_it_measures_clearly_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_flags: Callable[[str], None]
) -> None:
    cpu_flags("amx_bf16")
    batches = lambda: [object()]  # noqa: E731 - never read: the timing is injected
    calls = timed(monkeypatch, bf16=0.5, fp32=1.0)
    plan = plan_precision(qa(tmp_path), batches, CPU)  # type: ignore[arg-type]
    assert plan.choice.precision == "bf16" and calls == ["bf16", "fp32"] * ROUNDS  # alternated
    assert plan.seconds == {"bf16": 0.5, "fp32": 1.0} and "0.5 s a step in bf16" in plan.choice.reason
    timed(monkeypatch, bf16=CLEARLY_FASTER + 0.01, fp32=1.0)  # faster, but within a timing's noise
    plan = plan_precision(qa(tmp_path), batches, CPU)  # type: ignore[arg-type]
    assert plan.choice.precision == "fp32" and "bf16 measured no faster" in plan.choice.reason


def test_the_choice_takes_the_fastest_timing_and_the_plan_the_median(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_flags: Callable[[str], None]
) -> None:
    """The first round pays for warming up; the fastest of a few is lucky: steps are planned on the median."""
    cpu_flags("amx_bf16")
    timings = {"bf16": iter([0.9, 0.4, 0.5]), "fp32": iter([1.2, 0.5, 0.6])}
    monkeypatch.setattr(
        precision_plan, "step_seconds", lambda resolved, *_: next(timings[resolved.pipeline.train.precision])
    )
    plan = plan_precision(qa(tmp_path), lambda: [object()], CPU)  # type: ignore[arg-type, list-item]
    # fastest 0.4 against 0.5: 0.8, clearly faster (the medians, 0.5 against 0.6, would say 0.83)
    assert ROUNDS == 3 and plan.choice.precision == "bf16"
    assert plan.seconds == {"bf16": 0.5, "fp32": 0.6} and "0.5 s a step in bf16" in plan.choice.reason


def test_no_timing_where_the_hardware_has_no_fast_bf16_or_the_pipeline_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_flags: Callable[[str], None]
) -> None:
    calls = timed(monkeypatch, bf16=0.1, fp32=1.0)
    cpu_flags("avx2")
    assert plan_precision(qa(tmp_path), [object()], CPU).choice.precision == "fp32"  # type: ignore[list-item]
    cpu_flags("amx_bf16")
    named = plan_precision(qa(tmp_path, "fp32"), lambda: [object()], CPU)  # type: ignore[list-item]
    assert named.choice.precision == "fp32" and named.seconds == {} and calls == []


def test_a_resumed_run_keeps_the_precision_its_start_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_flags: Callable[[str], None]
) -> None:
    cpu_flags("amx_bf16")
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    write_tar(tmp_path / "train-0.tar", good_samples("a", 24))
    args = ["run", "qa", str(tmp_path / "train-0.tar"), "--registry", str(registry), "--json"]
    args += ["--out", str(tmp_path / "out")]
    timed(monkeypatch, bf16=0.5, fp32=1.0)
    first = invoke_mbp(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["precision"] == "bf16" and "measured 0.5 s a step" in first.stderr
    checkpoint = json.loads(first.stdout)["checkpoint"]
    document = json.loads((Path(checkpoint) / "config.json").read_text())
    assert recorded_precision(document) == "bf16"  # settled, not "auto"
    timed(monkeypatch, bf16=1.0, fp32=0.5)  # now fp32 would measure faster
    resumed = invoke_mbp(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["precision"] == "bf16"
    assert "as the run chose before it was resumed" in resumed.stderr
