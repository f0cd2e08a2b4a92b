"""Issue 15: the ``mblm-transformer`` backbone (mblm's TransformerBlock) under the shared harness, inside the
multiscale decoder, and in cached generation."""

from __future__ import annotations

import pytest
import torch
from mbp.generate import generate
from mbp.model import kv_plan
from mbp.model.build import build_model
from mbp.testing import (
    assert_backbone_causal,
    assert_model_causal,
    assert_step_matches_forward,
    generate_uncached,
)
from mbp_mblm.block import MblmTransformer, MblmTransformerParams, token_shift

VARIANTS = {
    "rotary": {"heads": 2, "head_dim": 8},
    "inner-wider-than-width": {"heads": 3, "head_dim": 8, "ff_mult": 3},
    "fixed-positions": {"heads": 2, "head_dim": 6, "pos_emb": "fixed", "max_positions": 40},
    "rope-positions-no-rotary": {"heads": 2, "head_dim": 8, "rotary": False, "pos_emb": "rope"},
}


@pytest.mark.parametrize("params", VARIANTS.values(), ids=list(VARIANTS))
@pytest.mark.parametrize("dim", [16, 17])
def test_harness_causal_and_step_equals_forward(params: dict, dim: int) -> None:
    if params.get("pos_emb") == "rope" and dim % 2:
        pytest.skip("mblm's RoPE positions pair channels: an odd width has none in mblm either")
    assert_backbone_causal(MblmTransformer(MblmTransformerParams(**params), dim=dim, layers=2), dim)
    assert_step_matches_forward(MblmTransformer(MblmTransformerParams(**params), dim=dim, layers=2), dim)


def params(**values: object) -> MblmTransformerParams:
    return MblmTransformerParams.model_validate(values)


def test_token_shift_moves_the_second_half_one_position() -> None:
    x = torch.arange(2 * 3 * 5, dtype=torch.float64).view(2, 3, 5)
    shifted = token_shift(x)
    # first ceil(5/2) = 3 channels stay; the last 2 come from the previous position (zeros at 0)
    torch.testing.assert_close(shifted[..., :3], x[..., :3], rtol=0, atol=0)
    torch.testing.assert_close(shifted[:, 1:, 3:], x[:, :-1, 3:], rtol=0, atol=0)
    assert shifted[:, 0, 3:].abs().sum().item() == 0


def test_fixed_positions_skip_the_start_token() -> None:
    fixed = params(heads=1, head_dim=8, pos_emb="fixed", max_positions=4)
    model = MblmTransformer(fixed, dim=8, layers=0).double()
    x = torch.zeros(1, 3, 8, dtype=torch.float64)
    positioned = model._positioned(x)
    assert positioned[0, 0].abs().sum().item() == 0
    torch.testing.assert_close(positioned[0, 1:], model.pos.weight[:2].double(), rtol=0, atol=0)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="exceed the fixed table of 4"):
        model(torch.zeros(1, 6, 8, dtype=torch.float64))


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="needs max_positions"):
        params(pos_emb="fixed")
    with pytest.raises(ValueError, match="even head_dim"):
        params(head_dim=5)


def model_config(stages: int) -> dict:
    refs = [
        {"type": "mblm-transformer", "heads": 2, "head_dim": 8, "pos_emb": "rope"},
        {"type": "mblm-transformer", "heads": 2, "head_dim": 8, "pos_emb": "fixed", "max_positions": 4},
        {"type": "mblm-transformer", "heads": 3, "head_dim": 4, "pos_emb": "fixed", "max_positions": 3},
    ]
    dims, lens = [32, 16, 12], [None, 4, 3]
    return {
        "stages": [
            {"backbone": refs[s], "dim": dims[s], "layers": 2 if s == 0 else 1, "seq_len": lens[s]}
            for s in range(stages)
        ]
    }


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_decoder_with_mblm_stages_is_causal_and_caches_exactly(components, stages: int) -> None:
    model = build_model(model_config(stages), components).eval()
    assert_model_causal(build_model(model_config(stages), components))
    prompts = [torch.randint(0, 256, (n,)) for n in (1, 5, 12, 13)]
    cached = generate(model, prompts, max_new=25, stop_tokens=())
    for prompt, tokens in zip(prompts, cached, strict=True):
        assert tokens == generate_uncached(model, prompt, 25)
    assert len({t for row in cached for t in row}) > 5, "a degenerate model would make this test vacuous"


def test_long_cache_attention_path_matches_too(components, monkeypatch: pytest.MonkeyPatch) -> None:
    # one step attends by a broadcast product on short caches and by SDPA on long ones: check SDPA's
    monkeypatch.setattr(kv_plan, "SMALL_ATTENTION", 0)
    model = build_model(model_config(2), components).eval()
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 9)]
    cached = generate(model, prompts, max_new=20, stop_tokens=())
    for prompt, tokens in zip(prompts, cached, strict=True):
        assert tokens == generate_uncached(model, prompt, 20)
