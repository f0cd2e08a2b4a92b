"""Issue 5: cached generation equals uncached decoding; sampling, stops, streaming, batching."""

from __future__ import annotations

import pytest
import torch
from mbp.generate import Sampling, generate, sample_next
from mbp.model import kv_plan
from mbp.protocol import END, EOS, PAD
from mbp.testing import generate_uncached

from tests.conftest import tiny_model

STACKS = [
    ("transformer",),
    ("mamba",),
    ("transformer", "transformer"),
    ("mamba", "transformer"),
    ("transformer", "mamba"),
    ("transformer",) * 3,
    ("mamba", "transformer", "transformer"),
]


@pytest.mark.parametrize("backbones", STACKS, ids=lambda b: "-".join(b))
def test_cached_greedy_equals_uncached(components, backbones: tuple[str, ...]) -> None:
    model = tiny_model(components, len(backbones), backbones).eval()
    # phases across patch boundaries; repeated lengths prefill as one group
    prompts = [torch.randint(0, 256, (n,)) for n in (1, 4, 4, 11, 12, 13, 13, 25)]
    cached = generate(model, prompts, max_new=30, stop_tokens=())
    for prompt, tokens in zip(prompts, cached, strict=True):
        assert tokens == generate_uncached(model, prompt, 30)
    assert len({t for row in cached for t in row}) > 5, "a degenerate model would make this test vacuous"


def test_long_cache_attention_path_matches_too(components, monkeypatch: pytest.MonkeyPatch) -> None:
    # steps attend by a broadcast product on short caches and by SDPA on long ones: check the SDPA path
    monkeypatch.setattr(kv_plan, "SMALL_ATTENTION", 0)
    model = tiny_model(components, 2).eval()
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 12, 17)]
    cached = generate(model, prompts, max_new=20, stop_tokens=())
    for prompt, tokens in zip(prompts, cached, strict=True):
        assert tokens == generate_uncached(model, prompt, 20)


@pytest.mark.parametrize("training", [True, False])
def test_the_uncached_reference_leaves_the_mode_it_found(components, training: bool) -> None:
    model = tiny_model(components, 2).train(training)
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    tokens = generate_uncached(model, torch.tensor([257, 1, 2]), 3)
    assert len(tokens) == 3 and seen == [False] * 3  # decoded in eval mode: no dropout
    assert model.training is training
    assert all(m.training is training for m in model.modules())


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_cached_logits_track_the_full_forward(components, stages: int) -> None:
    model = tiny_model(components, stages).double().eval()
    ids = torch.randint(0, 256, (1, 30))
    state, logits = model.prime([ids[0, :7]], max_new=30)
    full = model(torch.cat((ids, ids.new_full((1, 1), PAD)), dim=1))[0]
    steps = [logits[0]] + [model.step(ids[0, t : t + 1], state)[0] for t in range(7, 30)]
    torch.testing.assert_close(torch.stack(steps), full[7:31], rtol=0, atol=1e-10)


def test_seeded_sampling_is_reproducible_and_varies_with_seed(components) -> None:
    model = tiny_model(components, 2).eval()
    prompt = [torch.randint(0, 256, (5,))]
    first = generate(model, prompt, max_new=40, sampling=Sampling(temperature=1.0, seed=3), stop_tokens=())
    again = generate(model, prompt, max_new=40, sampling=Sampling(temperature=1.0, seed=3), stop_tokens=())
    other = generate(model, prompt, max_new=40, sampling=Sampling(temperature=1.0, seed=4), stop_tokens=())
    assert first == again and first != other


def test_top_k_and_top_p_restrict_the_candidates() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05] + [1e-9] * 258]))
    gen = torch.Generator().manual_seed(0)
    top1 = {int(sample_next(logits, Sampling(1.0, top_k=1), gen)) for _ in range(50)}
    topk2 = {int(sample_next(logits, Sampling(1.0, top_k=2), gen)) for _ in range(200)}
    topp = {int(sample_next(logits, Sampling(1.0, top_p=0.7), gen)) for _ in range(200)}
    assert top1 == {0} and topk2 == {0, 1} and topp == {0, 1}


def test_pad_is_never_generated() -> None:
    logits = torch.zeros(1, 262)
    logits[0, PAD] = 100.0
    assert int(sample_next(logits, Sampling(), None)) != PAD


def test_stops_at_stop_tokens_and_budget_and_streams(components) -> None:
    model = tiny_model(components, 2).eval()
    torch.nn.init.zeros_(model.to_logits.weight)
    with torch.no_grad():
        model.to_logits.bias.zero_()
        model.to_logits.bias[END] = 5.0
    seen: list[tuple[int, int]] = []
    out = generate(
        model,
        [torch.tensor([1, 2, 3]), torch.tensor([4])],
        max_new=10,
        stop_tokens=(END, EOS),
        callback=lambda row, token: seen.append((row, token)),
    )
    assert out == [[END], [END]] and seen == [(0, END), (1, END)]
    budget = generate(model, [torch.tensor([1])], max_new=4, stop_tokens=())
    assert budget == [[END] * 4]


def test_batched_rows_are_independent(components) -> None:
    model = tiny_model(components, 3).eval()
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 17)]
    together = generate(model, prompts, max_new=20, stop_tokens=())
    alone = [generate(model, [p], max_new=20, stop_tokens=())[0] for p in prompts]
    assert together == alone


def test_a_full_kv_cache_is_an_error_not_a_silent_overwrite(components) -> None:
    backbone = tiny_model(components, 1).backbones[0].eval()
    cache = backbone.allocate_cache(2, 2)
    everyone = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(2):
            backbone.step(torch.randn(2, 32), cache, everyone)
        with pytest.raises(RuntimeError, match="KV cache capacity 2 exceeded"):
            backbone.step(torch.randn(2, 32), cache, everyone)
        only_first = torch.tensor([True, False])
        with pytest.raises(RuntimeError, match="KV cache capacity 2 exceeded"):
            backbone.step(torch.randn(2, 32), cache, only_first)


@pytest.mark.parametrize("generator", ["uncached", "cached"])
def test_training_after_generation_gets_the_same_gradients(components, generator: str) -> None:
    # tables that generation builds under inference mode and layers keep (rotations) must stay usable
    # by autograd: the same length trains afterwards exactly as on a model that never generated
    model = tiny_model(components, 2)
    fresh = tiny_model(components, 2)
    fresh.load_state_dict(model.state_dict())
    if generator == "uncached":
        generate_uncached(model, torch.tensor([257, 1, 2]), 1)  # hidden() runs at length 4
    else:
        generate(model, [torch.randint(0, 256, (8,))], max_new=3)
    ids = torch.randint(0, 256, (2, 64))
    grads = []
    for m in (model, fresh):
        m.train()
        m.loss(ids[:, :4]).loss.backward()
        m.loss(ids).loss.backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Watched:
    """Passes everything through to a model and records which of its attributes were asked for."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.used = model, set[str]()

    def __getattr__(self, name: str) -> object:
        self.used.add(name)
        return getattr(self.model, name)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.used.add("forward")
        return self.model(ids)


def test_generation_reaches_the_decoder_only_through_its_public_methods(components) -> None:
    model = tiny_model(components, 3).eval()
    prompts = [torch.randint(0, 256, (n,)) for n in (2, 13)]
    watched = Watched(model)
    sampled = generate(watched, prompts, max_new=15, sampling=Sampling(1.0, seed=1), stop_tokens=())  # type: ignore[arg-type]
    assert sampled == generate(model, prompts, max_new=15, sampling=Sampling(1.0, seed=1), stop_tokens=())
    assert generate_uncached(watched, prompts[0], 3) == generate_uncached(model, prompts[0], 3)  # type: ignore[arg-type]
    modes = {"parameters", "training", "train", "eval"}
    assert watched.used == modes | {"prime", "step", "forward"}
