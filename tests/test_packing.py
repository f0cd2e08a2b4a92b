"""Packed rows keep their samples apart: each sample gets the logits, loss and gradients it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mbp.data.batches import aligned, collate
from mbp.model import decoder, kept_rows
from mbp.model.backbone import run_segments
from mbp.model.build import build_model
from mbp.protocol import PAD
from mbp.sample import EncodedSample
from mbp.testing import assert_segments_kept_apart

from tests.conftest import Exposing, stage, tiny_model


@pytest.mark.parametrize("name", ["transformer", "mamba"])
def test_every_backbone_keeps_segments_apart(components, name: str) -> None:
    ref = stage(name, 16, 2)["backbone"]
    assert_segments_kept_apart(components.build("backbones", ref, dim=16, layers=2), 16)


def test_core_fallback_matches_the_transformers_mask(components) -> None:
    """The fallback (each segment a row of its own) and a masked backbone agree, rows of several segments."""
    backbone = components.build("backbones", stage("transformer", 16, 2)["backbone"], dim=16, layers=2)
    backbone = backbone.double().eval()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2], [0] * 6 + [1] * 6])
    masked = backbone.forward_segments(x, segments)
    fallback = run_segments(Exposing(backbone), x, segments)
    torch.testing.assert_close(masked, fallback, rtol=0, atol=1e-12)
    assert (masked[:, 3:] - backbone(x)[:, 3:]).abs().max() > 1e-3  # the mask does change later segments


def _sample(tokens: list[int], weights: list[float]) -> EncodedSample:
    return EncodedSample(
        "test.tar", "0", np.array(tokens, dtype=np.int64), [], np.array(weights, dtype=np.float32)
    )


@pytest.mark.parametrize(
    ("stages", "backbones"), [(1, None), (2, None), (3, None), (2, ("mamba", "transformer"))]
)
def test_packed_samples_score_as_if_alone(components, stages: int, backbones: tuple[str, ...] | None) -> None:
    model = tiny_model(components, stages, backbones).double().train()
    align = model.patch_len
    lengths = [13, 1, 25]
    samples = [_sample(torch.randint(0, 256, (n,)).tolist(), [1.0] * n) for n in lengths]
    batch = collate([samples], seq_len=64, align=align)
    second = aligned(13, align)
    assert batch.starts[0] == [0, second, second + aligned(1, align)]
    assert batch.begins[0].nonzero().flatten().tolist() == batch.starts[0]
    packed = model(batch.tokens, batch.begins)[0]
    for sample, start in zip(samples, batch.starts[0], strict=True):
        ids = torch.as_tensor(sample.tokens)[None]
        alone = model(ids)[0]
        torch.testing.assert_close(packed[start : start + len(ids[0])], alone, rtol=0, atol=1e-10)
    # the loss over the packed row is the loss of the samples run one by one, gradients included
    model.zero_grad()
    packed_loss = model.loss(batch.tokens, batch.weights, batch.begins).loss
    packed_loss.backward()
    packed_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    total = sum(
        F.cross_entropy(model(torch.as_tensor(s.tokens)[None])[0], torch.as_tensor(s.tokens), reduction="sum")
        for s in samples
    )
    (total / sum(lengths)).backward()
    alone_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert packed_loss.item() == pytest.approx(total.item() / sum(lengths), rel=1e-6)
    for a, b in zip(packed_grads, alone_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("stages", [2, 3])
def test_answer_only_loss_skips_rows_and_still_keeps_samples_apart(components, stages: int) -> None:
    """The sparse loss path (only weighted last-stage rows run) agrees with the dense one on packed rows,
    also where a weighted token is a packed sample's first."""
    model = tiny_model(components, stages).double().train()
    align = model.patch_len
    samples = [_sample(torch.randint(0, 256, (n,)).tolist(), [0.0] * n) for n in (14, 9, 20)]
    samples[0].weights[-3:] = 1.0
    samples[1].weights[0] = 1.0  # a sample's first token: predicted from its own first start position
    samples[2].weights[[0, 7, 19]] = 0.5
    batch = collate([samples[:2], samples[2:]], seq_len=4 * align * 3, align=align)
    w = batch.weights * (batch.tokens != PAD)
    first = model.first_patches(batch.begins)
    assert model._weighted_rows(batch.tokens, w, batch.begins, first) is not None  # the skipping path runs
    sparse = model.loss(batch.tokens, batch.weights, batch.begins)
    logits = model(batch.tokens, batch.begins)
    ce = F.cross_entropy(logits.transpose(1, 2), batch.tokens.clamp(max=255), reduction="none")
    assert sparse.nats.item() == pytest.approx(float((ce * w).sum().detach()), rel=1e-6)


def test_samples_off_the_patch_grid_are_refused(components) -> None:
    model = tiny_model(components, 2)
    begins = torch.zeros(1, 16, dtype=torch.bool)
    begins[0, [0, 6]] = True
    with pytest.raises(ValueError, match="multiples of the patch length 4"):
        model(torch.randint(0, 256, (1, 16)), begins)


def test_checkpointed_stage_keeps_samples_apart_with_equal_gradients(components, monkeypatch) -> None:
    """Recomputing stage 1 in row chunks (``checkpoint: true``) passes each chunk its own segments."""
    monkeypatch.setattr(decoder, "CHECKPOINT_POSITIONS", 1)  # one row a chunk
    plain = tiny_model(components, 2).double().train()
    config = {"stages": [{**stage("transformer", 32, 2), "checkpoint": True}, stage("transformer", 16, 1, 4)]}
    checked = build_model(config, components).double().train()
    checked.load_state_dict(plain.state_dict())
    samples = [_sample(torch.randint(0, 256, (n,)).tolist(), [1.0] * n) for n in (9, 30, 5)]
    batch = collate([samples[:2], samples[2:]], seq_len=48, align=plain.patch_len)
    grads = []
    for model in (plain, checked):
        model.zero_grad()
        model.loss(batch.tokens, batch.weights, batch.begins).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_kept_rows_rounded_up_under_cpu_autocast_add_nothing_to_the_loss(components, monkeypatch) -> None:
    """Under bf16 autocast on CPU the kept byte-level rows are rounded up to a multiple of
    ``KEPT_ROWS_MULTIPLE`` with rows of no weight (a few shapes, so oneDNN's kernels are reused): the loss
    and its weight are the unrounded ones, to bf16's rounding."""
    model = tiny_model(components, 2).train()
    samples = [_sample(torch.randint(0, 256, (n,)).tolist(), [0.0] * n) for n in (30, 40, 50)]
    for sample in samples:
        sample.weights[-2:] = 1.0  # the answer: one or two rows a sample carry weight
    batch = collate([samples[:1], samples[1:2], samples[2:]], seq_len=64, align=model.patch_len)
    keep = torch.tensor([True, False, False, True, False])
    assert kept_rows.round_up_rows(keep).tolist() == [True] * 5  # fewer rows than the multiple: all
    monkeypatch.setattr(kept_rows, "KEPT_ROWS_MULTIPLE", 4)
    assert kept_rows.round_up_rows(keep).tolist() == [True, True, True, True, False]
    losses = {}
    for multiple in (1, 8):
        monkeypatch.setattr(kept_rows, "KEPT_ROWS_MULTIPLE", multiple)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            losses[multiple] = model.eval().loss(batch.tokens, batch.weights, batch.begins)
    assert losses[8].weight.item() == losses[1].weight.item()
    assert losses[8].nats.item() == pytest.approx(losses[1].nats.item(), rel=1e-2)
