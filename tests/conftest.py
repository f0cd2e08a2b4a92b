"""Shared fixtures: the platform, tiny models, and helpers to run the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from mbp.components import ComponentTable
from mbp.model.build import build_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.plugins import get_platform
from mbp.train.precision import CPU_FLAGS_VARIABLE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


FAST_BF16 = "avx512f amx_bf16"
"""The flags of a CPU that multiplies bf16 in hardware (``auto`` precision times both precisions)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-flags",
        default="",
        help="the CPU flags every test sees unless it sets its own (MBP_CPU_FLAGS); default: none, so "
        "auto precision is fp32 and untimed",
    )


@pytest.fixture(autouse=True)
def cpu_flags(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Pins the CPU's flags (``MBP_CPU_FLAGS``, which ``mbp.train.precision.cpu_flags`` and every
    ``mbp`` process a test starts read) to ``--cpu-flags``, none by default, so that no test depends
    on the CPU of the machine that runs it; returns a function that sets other flags
    (``cpu_flags("amx_bf16")``)."""

    def pin(flags: str) -> None:
        monkeypatch.setenv(CPU_FLAGS_VARIABLE, flags)

    pin(request.config.getoption("--cpu-flags"))
    return pin


@pytest.fixture(params=[False, True], ids=["no-fast-bf16", "fast-bf16"])
def fast_bf16(request: pytest.FixtureRequest, cpu_flags: Callable[[str], None]) -> bool:
    """Runs a test on a CPU without fast bf16 and again on one with it (``FAST_BF16``)."""
    cpu_flags(FAST_BF16 if request.param else "")
    return bool(request.param)


@pytest.fixture(scope="session")
def components() -> ComponentTable:
    return get_platform().components


def stage(backbone: str, dim: int, layers: int, seq_len: int | None = None, **params: Any) -> dict[str, Any]:
    defaults = {"transformer": {"heads": 2}, "mamba": {"state": 8, "headdim": 8, "chunk": 4}}.get(
        backbone, {}
    )
    return {
        "backbone": {"type": backbone, **defaults, **params},
        "dim": dim,
        "layers": layers,
        "seq_len": seq_len,
    }


class Exposing(torch.nn.Module):
    """``inner`` as a backbone with ``forward`` and only the named optional methods (``step``,
    ``prefill``, ``forward_segments``...), so that the core's fallback for each of the others runs."""

    def __init__(self, inner: torch.nn.Module, *methods: str) -> None:
        super().__init__()
        self.inner = inner
        for name in methods:
            setattr(self, name, getattr(inner, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def tiny_model(
    components: ComponentTable, stages: int = 2, backbones: tuple[str, ...] | None = None
) -> MultiscaleDecoder:
    """1, 2 or 3 stages with patch sizes 4 and 3; every stage a transformer unless ``backbones`` says."""
    names = backbones or ("transformer",) * stages
    dims, lens = [32, 16, 16][:stages], [None, 4, 3][:stages]
    config = {"stages": [stage(names[i], dims[i], 1 if i else 2, lens[i]) for i in range(stages)]}
    return build_model(config, components)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: a fixed rendezvous port clashes with another suite running
    the same test on the machine."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        return int(held.getsockname()[1])


def run_mbp(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mbp.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def invoke_mbp(*args: str) -> subprocess.CompletedProcess[str]:
    """``mbp ARGS`` run in this process by click's test runner: the same command code, exit code, stdout
    and stderr as :func:`run_mbp`, without a fresh interpreter's start (importing torch, loading the
    plugins: about 4 s a call). For calls whose subject is what a command computes (a training run, a
    checkpoint, an evaluation); what only a process shows (its environment, plugin loading, a terminal,
    a pipe, tracebacks at exit) stays with run_mbp."""
    from click.testing import CliRunner
    from mbp.cli import cli

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps stderr apart by itself
    result = runner.invoke(cli, list(args), prog_name="mbp", catch_exceptions=False)
    return subprocess.CompletedProcess(["mbp", *args], result.exit_code, result.stdout, result.stderr)
