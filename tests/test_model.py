"""Issue 4: the multiscale decoder: causality, padding, loss, checkpointing, save and load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from mbp.config import ModelConfig
from mbp.errors import CheckpointError, ConfigError
from mbp.model.build import build_model
from mbp.model.checkpoint_files import load_model, save_model
from mbp.protocol import PAD, VOCAB_SIZE
from mbp.testing import assert_backbone_causal, assert_model_causal, assert_step_matches_forward

from tests.conftest import Exposing, stage, tiny_model

BACKBONES = ["transformer", "mamba"]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_registered_backbone_is_causal_and_steps_like_forward(components, name: str) -> None:
    assert set(BACKBONES) <= set(components.names("backbones"))
    ref = stage(name, 16, 2)["backbone"]
    assert_backbone_causal(components.build("backbones", ref, dim=16, layers=2), 16)
    assert_step_matches_forward(components.build("backbones", ref, dim=16, layers=2), 16)


BIASED = {
    "swiglu": stage("transformer", 16, 2)["backbone"],
    "gelu": {**stage("transformer", 16, 2)["backbone"], "mlp": "gelu"},
    "mamba": stage("mamba", 16, 2)["backbone"],
}


@pytest.mark.parametrize("ref", BIASED.values(), ids=BIASED.keys())
def test_steps_pass_linear_biases_as_forward_does(components, ref: dict[str, Any]) -> None:
    backbone = components.build("backbones", ref, dim=16, layers=2)
    for module in backbone.modules():
        if isinstance(module, torch.nn.Linear):  # built without biases: give every one a bias
            module.bias = torch.nn.Parameter(torch.randn(module.out_features))
    assert_step_matches_forward(backbone, 16)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_without_prefill_are_stepped_by_the_core(components, name: str) -> None:
    ref = stage(name, 16, 2)["backbone"]
    backbone = Exposing(components.build("backbones", ref, dim=16, layers=2), "allocate_cache", "step")
    assert not hasattr(backbone, "prefill")
    assert_step_matches_forward(backbone, 16)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_whole_models_are_causal(components, stages: int) -> None:
    assert_model_causal(tiny_model(components, stages))


@pytest.mark.parametrize(
    "backbones", [("mamba", "transformer"), ("mamba", "transformer", "transformer"), ("transformer", "mamba")]
)
def test_hybrid_stacks_are_causal(components, backbones: tuple[str, ...]) -> None:
    assert_model_causal(tiny_model(components, len(backbones), backbones))


def test_harness_catches_a_leak() -> None:
    class Leaky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + x.roll(-1, dims=1)  # sees the next position

    with pytest.raises(AssertionError, match="moved"):
        assert_backbone_causal(Leaky(), 4)


def test_any_length_is_padded_internally_and_nothing_truncated(components) -> None:
    model = tiny_model(components, 3).eval()  # patch length 12
    for length in (1, 11, 12, 13, 50):
        ids = torch.randint(0, 256, (2, length))
        assert model(ids).shape == (2, length, VOCAB_SIZE)
    # a prefix's logits do not depend on what follows, padding included. Not bit-equal: a different
    # number of patches changes the reduction order inside attention, so float64 at 1e-12.
    model = model.double()
    ids = torch.randint(0, 256, (1, 30))
    torch.testing.assert_close(model(ids[:, :17]), model(ids)[:, :17], rtol=0, atol=1e-12)


def test_fixed_stage_one_length_is_a_stated_limit(components) -> None:
    config = {"stages": [stage("transformer", 16, 1, 3), stage("transformer", 16, 1, 4)]}
    model = build_model(config, components)
    assert model.max_len == 12
    with pytest.raises(ConfigError, match="input of 13 tokens is longer than the model's limit of 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_loss_is_weighted_mean_in_nats_and_bits_per_byte(components) -> None:
    model = tiny_model(components, 2).eval()
    torch.nn.init.zeros_(model.to_logits.weight)
    torch.nn.init.zeros_(model.to_logits.bias)
    ids = torch.randint(0, 256, (2, 9))
    uniform = model.loss(ids)
    assert uniform.loss.item() == pytest.approx(math.log(VOCAB_SIZE))
    assert uniform.bits_per_byte == pytest.approx(math.log2(VOCAB_SIZE))
    assert uniform.weight.item() == 18


def test_fractional_weights_kept_and_pad_never_counted(components) -> None:
    model = tiny_model(components, 2).eval()
    ids = torch.randint(0, 256, (2, 10))
    ids[1, 7:] = PAD
    weights = torch.rand(2, 10)
    logits = model(ids)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    keep = weights * (ids != PAD)
    expected = (ce * keep).sum() / keep.sum()
    result = model.loss(ids, weights)
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert result.weight.item() == pytest.approx(keep.sum().item(), rel=1e-6)


@pytest.mark.parametrize("stages", [2, 3])
def test_loss_skips_unweighted_rows_exactly(components, stages: int) -> None:
    """Answer-only weights: the last stage runs on the weighted rows alone, with the same loss and grads."""
    model = tiny_model(components, stages).train()
    ids = torch.randint(0, 256, (3, 50))
    ids[2, 41:] = PAD
    weights = torch.zeros(3, 50)
    weights[0, 30:33] = 1.0  # an answer straddling a patch boundary
    weights[1, 0] = 1.0  # token 0: predicted by the first start token
    weights[2, 38:41] = 0.5
    assert model._weighted_rows(ids, weights * (ids != PAD), None, None) is not None  # the skipping path runs
    model.zero_grad()
    sparse = model.loss(ids, weights)
    sparse.loss.backward()
    sparse_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    logits = model(ids)  # the full forward: every row of every stage
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    keep = weights * (ids != PAD)
    full = (ce * keep).sum() / keep.sum()
    full.backward()
    full_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert sparse.loss.item() == pytest.approx(full.item(), rel=1e-5)
    assert sparse.weight.item() == pytest.approx(keep.sum().item())
    assert len(sparse_grads) == len(full_grads)
    for a, b in zip(sparse_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = model.loss(ids).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_checkpointing_and_chunked_loss_leave_loss_and_gradients_equal(components) -> None:
    plain = tiny_model(components, 3).train()
    config = {
        "stages": [
            {**stage("transformer", [32, 16, 16][i], 1 if i else 2, [None, 4, 3][i]), "checkpoint": True}
            for i in range(3)
        ],
        "loss_chunk": 7,
    }
    checked = build_model(config, components).train()
    checked.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 256, (2, 40))
    loss_a, grads_a = _loss_and_grads(plain, ids)
    loss_b, grads_b = _loss_and_grads(checked, ids)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_runs_and_stays_close(components) -> None:
    model = tiny_model(components, 2).eval()
    ids = torch.randint(0, 256, (2, 24))
    full = model.loss(ids).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model.loss(ids).loss.item()
    assert half == pytest.approx(full, rel=0.05)  # bf16 keeps ~3 significant digits


def test_save_and_load_round_trip_without_pickle(components, tmp_path: Path) -> None:
    config = ModelConfig.model_validate({"stages": [stage("mamba", 32, 1), stage("transformer", 16, 1, 4)]})
    model = build_model(config, components).eval()
    save_model(tmp_path / "ckpt", model, config)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded, _ = load_model(tmp_path / "ckpt", components)
    ids = torch.randint(0, 256, (1, 20))
    assert torch.equal(model(ids), loaded.eval()(ids))
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\x80\x04 pickle bytes, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "ckpt", components)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path, components)


def test_parameter_count_matches_mblm_layout(components) -> None:
    """The benchmark architecture; MBLM's embedding, projection and start-token layout, counted by hand."""
    config = {
        "stages": [stage("transformer", 256, 4, 128, heads=4), stage("transformer", 128, 2, 64, heads=4)]
    }
    model = build_model(config, components)
    v, d1, d2, p = VOCAB_SIZE, 256, 128, 64
    embeddings = v * d2 + (v * d2 + 2 * p * d2 + p * d2 * d1 + d1 + 2 * d1)
    glue = d1 + d2 + (d1 * d2 * p + d2 * p) + (d2 * v + v)
    backbones = sum(p.numel() for b in model.backbones for p in b.parameters())
    assert sum(p.numel() for p in model.parameters()) == embeddings + glue + backbones
