"""One function makes a training step (``mbp.train.step.train_step``): its contract, and that the step
timer times it."""

from __future__ import annotations

import copy

import pytest
import torch
from mbp.data.batches import Batch
from mbp.overrides import apply_overrides
from mbp.planning import steptime
from mbp.resolve import resolve
from mbp.train import step as step_module
from mbp.train.precision import PrecisionChoice
from mbp.train.step import LossStep, StepResult, train_step

from tests.conftest import tiny_model

FP32 = PrecisionChoice("fp32", "under test")
ROW = 24


def rows(count: int, seed: int) -> Batch:
    """``count`` full rows of random bytes: every micro-batch weighs the same number of tokens."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (count, ROW), generator=generator)
    begins = torch.zeros(count, ROW, dtype=torch.bool)
    begins[:, 0] = True
    return Batch(tokens, torch.ones(count, ROW), begins, [[] for _ in range(count)], [[0]] * count)


def stepped(model: torch.nn.Module, parts: list[Batch], clip: float | None) -> StepResult:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_step(LossStep(model), model, optimizer, parts, FP32, clip)  # type: ignore[arg-type]


@pytest.mark.parametrize("clip", [None, 0.5])
def test_two_micro_batches_step_as_one_batch_of_both(components, clip: float | None) -> None:
    torch.manual_seed(0)
    model = tiny_model(components).eval()  # no dropout: the two steps see the same network
    twin = copy.deepcopy(model)
    first, second = rows(2, 1), rows(2, 2)
    both = Batch(
        torch.cat([first.tokens, second.tokens]),
        torch.cat([first.weights, second.weights]),
        torch.cat([first.begins, second.begins]),
        first.rows + second.rows,
        first.starts + second.starts,
    )
    accumulated = stepped(model, [first, second], clip)
    whole = stepped(twin, [both], clip)
    assert accumulated.loss == pytest.approx(whole.loss, abs=1e-6)
    assert accumulated.grad_norm == pytest.approx(whole.grad_norm, rel=1e-5)
    assert accumulated.tokens == whole.tokens == 4 * ROW
    assert accumulated.loss > 1.0 and accumulated.grad_norm > 0.1  # a real step, not zeros
    for (name, got), want in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(got, want, atol=1e-6), name


def test_the_step_clips_to_clip_and_reports_the_norm_before(components) -> None:
    torch.manual_seed(0)
    model = tiny_model(components).eval()
    result = stepped(copy.deepcopy(model), [rows(2, 3)], clip=1e-3)
    assert result.grad_norm > 1e-3  # the norm before clipping
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_step(LossStep(model), model, optimizer, [rows(2, 3)], FP32, 1e-3)
    moved = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()])
    assert moved.norm().item() == pytest.approx(1e-3, rel=1e-3)  # SGD at lr 1 moves by the clipped norm


def test_a_settle_that_refuses_leaves_the_weights_unchanged(components) -> None:
    model = tiny_model(components)
    before = copy.deepcopy(model.state_dict())

    def refuse(loss: torch.Tensor, norm: torch.Tensor) -> tuple[float, float]:
        raise RuntimeError("diverged")

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(RuntimeError, match="diverged"):
        train_step(LossStep(model), model, optimizer, [rows(2, 4)], FP32, None, refuse)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_the_step_timer_times_train_step(components, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's step time is the time of the run's step: the timer calls ``train_step`` with the
    run's ``grad_accum`` micro-batches, not a copy of it."""
    calls: list[int] = []

    def counted(*args, **kwargs) -> StepResult:
        calls.append(len(args[3]))
        return step_module.train_step(*args, **kwargs)

    monkeypatch.setattr(steptime, "train_step", counted)
    monkeypatch.setattr(steptime, "TIMED_STEPS", 1)
    registered = resolve(None, "lm-text", components=components)
    accumulating = apply_overrides(registered, ["train.grad_accum=2", "train.precision=fp32"])
    resolved = resolve(None, "lm-text", accumulating, components=components)
    assert steptime.step_seconds(resolved, [rows(2, 5)], torch.device("cpu")) > 0
    assert calls == [2, 2]  # a warm-up step and a timed one, each of two micro-batches
