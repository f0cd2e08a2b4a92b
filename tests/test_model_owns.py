"""The decoder owns what it knows: how prompts start generation, how tokens are scored, which parameters
training treats alike and which units FSDP shards. Callers ask it; none of them re-derive it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mbp.config import TrainConfig
from mbp.data.batches import Batch
from mbp.protocol import PAD
from mbp.sample import EncodedSample
from mbp.train.evaluate import score_tokens
from mbp.train.optim import make_optimizer

from tests.conftest import tiny_model


def one_sample_rows(tokens: torch.Tensor) -> Batch:
    """Each row of ``tokens: (B, L)`` one sample, weighted on every token."""
    count, length = tokens.shape
    begins = torch.zeros(count, length, dtype=torch.bool)
    begins[:, 0] = True
    samples = [
        [EncodedSample("s.tar", str(i), row.numpy(), [], np.ones(length, np.float32))]
        for i, row in enumerate(tokens)
    ]
    return Batch(tokens, torch.ones(count, length), begins, samples, [[0]] * count)


def test_evaluation_scores_tokens_with_the_decoders_own_scoring(components) -> None:
    torch.manual_seed(0)
    model = tiny_model(components, 2).eval()
    tokens = torch.randint(0, 256, (3, 24))
    calls = []
    scoring = model.token_nats

    def counted(hidden: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(ids.shape)
        return scoring(hidden, ids)

    model.token_nats = counted  # type: ignore[method-assign]
    scored = score_tokens(model, [one_sample_rows(tokens)])
    assert calls == [torch.Size([24])] * 3  # once a row, nothing scored beside it
    with torch.no_grad():
        loss = model.loss(tokens)
        nats, logits = scoring(model.hidden(tokens), tokens)
    # the loss and evaluation give every token the same nats
    evaluated = np.concatenate([n for _, n, _ in scored])
    np.testing.assert_allclose(evaluated, nats.numpy(), rtol=0, atol=1e-5)
    assert float(loss.nats) == pytest.approx(float(evaluated.sum()), rel=1e-5)
    assert evaluated.mean() > 4.0  # an untrained model: about ln(256) a token, not zeros
    hits = np.concatenate([c for _, _, c in scored])
    assert hits.tolist() == (logits.argmax(-1) == tokens.flatten()).tolist()


def test_token_nats_are_fp32_for_bf16_states_and_flatten_every_token(components) -> None:
    model = tiny_model(components, 1)
    hidden, ids = torch.randn(2, 5, 32), torch.randint(0, 256, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nats, logits = model.token_nats(hidden, ids)
    assert nats.shape == (10,) and logits.shape == (10, model.vocab_size)
    assert nats.dtype == logits.dtype == torch.float32


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_parameter_groups_split_every_parameter_once(components, stages: int) -> None:
    model = tiny_model(components, stages)
    groups = model.param_groups()
    every = [id(p) for p in model.parameters()]
    assert groups.decayed and groups.plain
    assert sorted(id(p) for p in groups.decayed + groups.plain) == sorted(every)
    assert all(p.ndim >= 2 for p in groups.decayed) and {id(p) for p in model.start_tokens} <= {
        id(p) for p in groups.plain
    }
    linear = [m.weight for m in model.backbones[-1].modules() if isinstance(m, torch.nn.Linear)]
    assert [id(p) for p in groups.byte_level] == [id(p) for p in linear] and linear
    assert {id(p) for p in groups.byte_level} <= {id(p) for p in groups.decayed}
    # AdamW alone decays exactly the matrices the model names
    adamw = make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1))
    decaying = [g for g in adamw.param_groups if g["weight_decay"] == 0.1]
    assert [id(p) for g in decaying for p in g["params"]] == [id(p) for p in groups.decayed]


def test_sharding_units_are_each_stages_backbone(components) -> None:
    model = tiny_model(components, 3)
    units = model.sharding_units()
    assert [id(u) for u in units] == [id(b) for b in model.backbones] and len(units) == 3


def test_priming_needs_a_token_in_every_prompt(components) -> None:
    model = tiny_model(components, 2).eval()
    with pytest.raises(ValueError, match="at least one token"):
        model.prime([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], max_new=3)
    with pytest.raises(ValueError, match="at least one token"):
        model.prime([], max_new=3)


def test_priming_prompts_of_mixed_lengths_gives_each_rows_next_logits(components) -> None:
    torch.manual_seed(0)
    model = tiny_model(components, 3).double().eval()
    prompts = [torch.randint(0, 256, (n,)) for n in (1, 12, 5, 12)]
    cache, logits = model.prime(prompts, max_new=2)
    assert cache.lengths.tolist() == [1, 12, 5, 12]
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            full = model(torch.cat((prompt, torch.tensor([PAD])))[None])[0, -1]
        torch.testing.assert_close(logits[row], full, rtol=0, atol=1e-10)
