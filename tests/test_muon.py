"""Issue 14: Muon for the byte-level stage's matrices, AdamW for the rest (``train.optimizer``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mbp.config import TrainConfig
from mbp.errors import ConfigError
from mbp.model.build import build_model
from mbp.planning.recorded import recorded_optimizer
from mbp.resolve import resolve
from mbp.train.muon import Muon, MuonWithAdamW, orthogonalized, update_scale
from mbp.train.optim import describe_optimizer, make_optimizer, settled_optimizer
from safetensors.torch import load_file

from tests.conftest import invoke_mbp
from tests.shardkit import REGISTRY, good_samples, write_tar

MODEL = {
    "stages": [
        {"backbone": {"type": "transformer", "heads": 2}, "dim": 32, "layers": 2},
        {"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1, "patch": 4},
    ]
}


@pytest.mark.parametrize("shape", [(8, 64, 16), (3, 16, 48), (2, 24, 24)])
def test_newton_schulz_brings_every_singular_value_near_one(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    # singular values spread over two orders of magnitude; five iterations raise the smallest about
    # 3.4445 ** 5 = 486-fold, so directions much weaker than that stay weak, by design
    u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    spread = torch.logspace(0, -2, u.shape[-1])
    updates = u @ torch.diag_embed(spread.expand(shape[0], -1)) @ v
    values = torch.linalg.svdvals(orthogonalized(updates, steps=5))
    assert values.min() > 0.6 and values.max() < 1.25  # Jordan et al.: about [0.7, 1.2]
    # the same directions: the result is U f(S) V^T, so U^T X V is diagonal
    inner = u.transpose(1, 2) @ orthogonalized(updates, steps=5) @ v.transpose(1, 2)
    off = inner - torch.diag_embed(torch.diagonal(inner, dim1=1, dim2=2))
    assert off.abs().max() < 1e-3


def test_a_muon_step_moves_along_the_orthogonalized_gradient_at_adamws_rms() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(48, 16))  # from zero the step is read back exactly
    before = weight.detach().clone()
    weight.grad = torch.randn(48, 16)
    Muon([weight], lr=0.01, weight_decay=0.0, momentum=0.0).step()
    step = (before - weight.detach()) / (0.01 * update_scale(weight.shape))
    expected = orthogonalized(weight.grad[None], steps=5)[0]
    assert torch.allclose(step, expected, atol=1e-5)
    rms = float((before - weight.detach()).pow(2).mean().sqrt())
    assert rms == pytest.approx(0.01 * 0.2, rel=0.2)  # an AdamW step's RMS is about lr x 0.2


def test_muon_decays_weights_decoupled_from_the_gradient() -> None:
    weight = torch.nn.Parameter(torch.ones(4, 4))
    weight.grad = torch.zeros(4, 4)
    Muon([weight], lr=0.1, weight_decay=0.5).step()
    assert torch.allclose(weight.detach(), torch.full((4, 4), 0.95))


def test_muon_takes_the_byte_level_stages_linear_maps_and_adamw_the_rest(components) -> None:
    model = build_model(MODEL, components)
    optimizer = make_optimizer(model, TrainConfig())
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    linear = [m.weight for m in model.backbones[-1].modules() if isinstance(m, torch.nn.Linear)]
    assert muon == {id(p) for p in linear} and len(muon) == 4  # qkv, out, up, down of one layer
    adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    assert adamw | muon == {id(p) for p in model.parameters()} and not adamw & muon
    # a schedule that sets every group's rate reaches both
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    assert {g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {0.5}
    plain = make_optimizer(model, TrainConfig(optimizer="adamw"))
    assert isinstance(plain, torch.optim.AdamW)
    # a byte-level stage of no layers has no matrices for Muon: AdamW alone, and the run says so
    bare = {"stages": [MODEL["stages"][0], {**MODEL["stages"][1], "layers": 0}]}
    fallback = make_optimizer(build_model(bare, components), TrainConfig())
    assert isinstance(fallback, torch.optim.AdamW)
    assert describe_optimizer(fallback, TrainConfig(), "muon") == "AdamW"


def test_the_pair_saves_and_loads_its_state_exactly(components) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (2, 32))

    def trained(steps: int, state: dict | None = None) -> tuple[torch.nn.Module, MuonWithAdamW]:
        torch.manual_seed(1)
        model = build_model(MODEL, components)
        optimizer = make_optimizer(model, TrainConfig())
        assert isinstance(optimizer, MuonWithAdamW)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        for _ in range(steps):
            model.loss(ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model, optimizer

    straight, _ = trained(4)
    half, optimizer = trained(2)
    saved = optimizer.state_dict()
    assert sorted(saved["state"]) == list(range(sum(1 for _ in half.parameters())))  # one numbering
    resumed, _ = trained(2, {"model": half.state_dict(), "optimizer": saved})
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="not Muon's and AdamW's"):
        optimizer.load_state_dict(torch.optim.AdamW(half.parameters()).state_dict())


def test_fsdp_runs_adamw_and_a_muon_checkpoint_cannot_resume_under_it(tmp_path: Path, components) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    resolved = resolve(str(registry), "qa", components=components)
    assert resolved.pipeline.train.optimizer == "muon"
    sharded = resolved.with_settings("train", strategy="fsdp")
    assert settled_optimizer(sharded).pipeline.train.optimizer == "adamw"
    assert settled_optimizer(resolved).pipeline.train.optimizer == "muon"
    assert settled_optimizer(resolved, "adamw").pipeline.train.optimizer == "adamw"
    with pytest.raises(ConfigError, match=r"resume with train\.strategy=ddp"):
        settled_optimizer(sharded, "muon")
    # the first line gives FSDP as the reason only where it overrode a request for Muon
    overridden = settled_optimizer(sharded).pipeline.train
    model = build_model(MODEL, components)
    adamw, muon = make_optimizer(model, overridden), make_optimizer(model, resolved.pipeline.train)
    said = "AdamW (FSDP shards the matrices Muon needs whole)"
    assert describe_optimizer(adamw, overridden, "muon") == said
    assert describe_optimizer(adamw, overridden, "adamw") == "AdamW"
    assert describe_optimizer(muon, resolved.pipeline.train, "muon").startswith("Muon on the byte-level")


def run_args(tmp_path: Path, out: Path) -> list[str]:
    """``mbp run`` of the test registry's ``qa`` pipeline on 16 samples, into ``out``."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(REGISTRY)
    write_tar(tmp_path / "train-0.tar", good_samples("a", 16))
    return ["run", "qa", str(tmp_path / "train-0.tar"), "--registry", str(registry), "--out", str(out)]


def test_checkpoints_record_the_optimizer_and_older_ones_resume_with_adamw(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = run_args(tmp_path, out)
    first = invoke_mbp(*args, "--json", "--set", "train.steps=4", "--set", "train.checkpoint_every=2")
    assert first.returncode == 0, first.stderr
    assert "Muon on the byte-level stage and AdamW on the rest" in first.stderr
    checkpoint = out / "checkpoints" / "step-00000004"
    document = json.loads((checkpoint / "config.json").read_text())
    assert recorded_optimizer(document) == "muon"
    assert len(document["optimizer"]["param_groups"]) == 3  # Muon's, then AdamW's two
    assert any(
        key.endswith(".momentum_buffer") for key in load_file(str(checkpoint / "optimizer.safetensors"))
    )
    del document["pipeline"]["train"]["optimizer"]
    assert recorded_optimizer(document) == "adamw"  # written before there was a choice


def test_a_run_resumed_from_adamw_keeps_adamw_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = run_args(tmp_path, out)
    first = invoke_mbp(*args, "--set", "train.steps=2", "--set", "train.optimizer=adamw")
    assert first.returncode == 0, first.stderr
    resumed = invoke_mbp(*args, "--resume", "--set", "train.steps=4")  # the pipeline asks for Muon
    assert resumed.returncode == 0, resumed.stderr
    assert "AdamW (the resumed checkpoint holds AdamW's state)" in resumed.stderr
    document = json.loads((out / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert recorded_optimizer(document) == "adamw"
