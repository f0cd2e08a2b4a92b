"""Shared fixtures: the platform, tiny models, and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mbp.components import ComponentTable
from mbp.model.build import build_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.plugins import get_platform

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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
