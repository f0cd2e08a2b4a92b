"""bf16 autocast on CPU, where ``train.precision`` chooses it: every backbone (the Transformer, Mamba,
mblm's), packed or not, trains, evaluates and generates with a KV or state cache in it and stays
within bf16's rounding of a float64 reference; fp32 stays within fp32's. The registry's Mamba pipelines
take a training step (as ``auto`` precision times one), evaluate and generate in bf16 at their default
model sizes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mbp.components import ComponentTable
from mbp.data.batches import Batch, collate
from mbp.data.read import RawSample
from mbp.generate import generate
from mbp.model.build import build_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.overrides import apply_overrides
from mbp.planning import steptime
from mbp.planning.steptime import step_seconds
from mbp.plugins import get_platform
from mbp.resolve import resolve
from mbp.sample import EncodedSample
from mbp.train.evaluate import evaluate
from mbp.train.precision import Precision, PrecisionChoice

from tests.conftest import stage

CPU = torch.device("cpu")
MBLM = {"heads": 2, "head_dim": 8}
STACKS = {
    "transformer": ("transformer", "transformer"),
    "mamba": ("mamba", "mamba"),
    "mblm": ("mblm-transformer", "mblm-transformer"),
}
"""Each backbone in both stages: the global stage is the one that runs packed samples apart."""

TOLERANCE = {"fp32": 1e-5, "bf16": 0.03}
"""Relative error from float64: bf16 keeps 8 bits of mantissa (about 2-3 significant digits, and the
errors of a few layers add up); fp32 keeps 24."""


def stacked(components: ComponentTable, names: tuple[str, str]) -> MultiscaleDecoder:
    stages = []
    for index, (name, dim, length) in enumerate(zip(names, (32, 16), (None, 4), strict=True)):
        stages.append(stage(name, dim, 2 - index, length, **(MBLM if name.startswith("mblm") else {})))
    return build_model({"stages": stages}, components)


def sample(length: int) -> EncodedSample:
    tokens = torch.randint(0, 256, (length,)).numpy()
    return EncodedSample("bf16.tar", str(length), tokens, [], np.ones(length, np.float32))


def rows(packed: bool, align: int) -> Batch:
    """Two rows of 48 tokens: three and two samples each, or one sample a row."""
    if packed:
        return collate([[sample(13), sample(1), sample(17)], [sample(9), sample(22)]], 48, align)
    return collate([[sample(29)], [sample(40)]], 48, align)


def measured(model: MultiscaleDecoder, batch: Batch, choice: PrecisionChoice) -> dict[str, torch.Tensor]:
    """The training loss and its gradients, evaluation's per-token nats, and the next-token logits of a
    cached prefill and step, each computed under ``choice``'s autocast (fp32 metrics, as the run sums)."""
    model.zero_grad(set_to_none=True)
    model.train()
    with choice.autocast(CPU):
        loss = model.loss(batch.tokens, batch.weights, batch.begins).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    model.eval()
    with torch.no_grad():
        with choice.autocast(CPU):
            hidden = model.hidden(batch.tokens, batch.begins)
        logits = model.to_logits(hidden.to(torch.promote_types(hidden.dtype, torch.float32)))
        nats = F.cross_entropy(logits.flatten(0, 1), batch.tokens.flatten(), reduction="none")
        prompts = [batch.tokens[0, :11], batch.tokens[1, :6]]
        with choice.autocast(CPU):
            _, logits = model.prime(prompts, max_new=4)
    return {"loss": loss.detach().double(), "grads": grads, "nats": nats.double(), "logits": logits.double()}


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got - reference).norm() / reference.norm())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("packed", [False, True], ids=["one-sample-a-row", "packed"])
@pytest.mark.parametrize("stack", list(STACKS))
def test_every_backbone_runs_in_each_precision_within_its_rounding(
    components: ComponentTable, stack: str, packed: bool, precision: Precision
) -> None:
    model = stacked(components, STACKS[stack])
    reference_model = copy.deepcopy(model).double()
    batch = rows(packed, model.patch_len)
    assert len(batch.starts[0]) == (3 if packed else 1)
    got = measured(model, batch, PrecisionChoice(precision, "under test"))
    reference = measured(reference_model, batch, PrecisionChoice("fp32", "float64 weights"))
    for name, values in got.items():
        assert bool(torch.isfinite(values).all()), f"{name} not finite"
        error = relative_error(values, reference[name])
        assert error < TOLERANCE[precision], f"{name} off float64 by {error:.3g}"
    with PrecisionChoice(precision, "under test").autocast(CPU):
        written = generate(model, [batch.tokens[0, :11], batch.tokens[1, :6]], max_new=5)
    assert [len(tokens) for tokens in written] == [5, 5]


ROW = 256


@pytest.mark.parametrize("name", ["mamba-transformer", "mamba-transformer-transformer"])
def test_the_registry_mamba_pipelines_train_evaluate_and_generate_in_bf16(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model at the registry's sizes; rows of 256 bytes (for 8,192 and 65,536) and one timed step
    keep the test short."""
    components = get_platform().components
    registered = resolve(None, name, components=components)
    shrunk = apply_overrides(registered, [f"data.seq_len={ROW}", "train.precision=bf16"])
    resolved = resolve(None, name, shrunk, components=components)
    patch = resolved.pipeline.model.patch_len
    texts = [b"in the beginning was the word " * n for n in (1, 2, 3)]
    encoded = [resolved.encoder.encode(RawSample("x.tar", str(i), {"txt": t})) for i, t in enumerate(texts)]
    batch = collate([encoded[:2], encoded[2:]], ROW, patch)
    assert len(batch.starts[0]) == 2  # packed
    bf16 = PrecisionChoice("bf16", "under test")
    # what `auto` precision times on a CPU with fast bf16: steps of the model with its optimizer
    monkeypatch.setattr(steptime, "TIMED_STEPS", 1)
    assert math.isfinite(step_seconds(resolved, [batch], CPU))
    model = build_model(resolved.pipeline.model, components)
    with bf16.autocast(CPU):
        loss = model.loss(batch.tokens, batch.weights, batch.begins).loss
    loss.backward()
    assert math.isfinite(loss.item()) and all(
        bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None
    )
    metrics = evaluate(model, [batch], resolved.head, precision=bf16)
    assert math.isfinite(metrics["loss_bpb"]) and metrics["loss_bpb"] > 0
    with bf16.autocast(CPU):
        written = generate(model, [batch.tokens[0, :20], batch.tokens[1, :7]], max_new=6)
    assert [len(tokens) for tokens in written] == [6, 6]
