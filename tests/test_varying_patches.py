"""Byte-level patches of varying length: causal, packed samples as if alone, the fixed path's numbers
where every patch is full, gradients to every parameter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mbp.boundaries import WordStarts, patch_starts
from mbp.generate import Sampling, sample_next
from mbp.model import varying_patches
from mbp.model.build import build_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.model.varying_patches import cut_long_patches, pack_patches, patch_layout
from mbp.protocol import HDR, SEG
from mbp.testing import assert_model_causal, generate_uncached

from tests.conftest import tiny_model
from tests.test_mblm_backbone import model_config

RULES = {"t": WordStarts()}
STACKS = [("transformer",) * 2, ("transformer",) * 3, ("mamba", "transformer"), ("transformer", "mamba")]


def text_tokens(rows: int, length: int) -> torch.Tensor:
    """``rows`` text segments (``SEG t HDR`` and words) of ``length`` tokens: words of 1 to 8 bytes."""
    alphabet = torch.tensor(list(b"abcdefgh  ,\n"))
    body = alphabet[torch.randint(0, len(alphabet), (rows, length - 3))]
    return torch.cat((torch.tensor([SEG, ord("t"), HDR]).expand(rows, 3), body), dim=1)


def starts_by_rule(model: MultiscaleDecoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """Patch starts placed by ``RULES`` on each row, as the data path places them."""
    longest = model.patch_sizes[-1]

    def starts_of(ids: torch.Tensor) -> torch.Tensor:
        rows = [patch_starts(row.numpy(), RULES, longest) for row in ids]
        return torch.from_numpy(np.stack(rows))

    return starts_of


def test_layout_puts_each_patch_at_a_grid_slot_and_aligns_samples_to_stage_one_units() -> None:
    starts = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert cut_long_patches(starts, 2).int().tolist() == [[1, 0, 1, 1, 0, 1, 1, 0, 1]]
    layout = patch_layout(starts, None, longest=3, group=1)
    assert layout.slots.tolist() == [[0, 1, 3, 6, 7, 8, 9, 10, 11]]
    assert layout.sizes.tolist() == [2, 1, 3, 3] and layout.width == 12
    rounded = patch_layout(starts, None, longest=3, group=1, multiple=3)  # padding patches at the end
    assert rounded.sizes.tolist() == [2, 1, 3, 3, 0, 0] and rounded.width == 18
    # 2 patches a stage-1 unit: a sample beginning at token 3 has 2 patches before it, aligned already
    begins = torch.zeros_like(starts)
    begins[0, 3] = True
    layout = patch_layout(starts, begins, longest=3, group=2)
    assert layout.slots.tolist() == [[0, 1, 3, 6, 7, 8, 9, 10, 11]]  # 2 patches before: aligned already
    begins[0, 3], begins[0, 2] = False, True
    starts[0, 3] = False
    layout = patch_layout(starts, begins, longest=3, group=2)
    # one patch before a sample beginning at token 2: a padding patch moves it to patch 2; its tokens
    # [2:6] are cut into 3 + 1, then [6:9]
    assert layout.slots.tolist() == [[0, 1, 6, 7, 8, 9, 12, 13, 14]]
    assert layout.sizes.tolist() == [2, 0, 3, 1, 3, 0] and layout.width == 18
    assert layout.begins is not None and layout.begins.nonzero()[:, 1].tolist() == [6]


def test_patches_pack_into_rows_in_order_each_a_segment_of_its_own() -> None:
    widths = torch.tensor([3, 0, 4, 2, 5, 1])  # patches 5 positions apart; the second does not run
    packing = pack_patches(widths, stride=5, row=6)
    # next fit: [3] + [4] does not fit a row of 6, [4, 2] does, [5] and [1] share the last
    assert packing.segments.tolist() == [[0, 0, 0, 5, 5, 5], [1, 1, 1, 1, 2, 2], [3, 3, 3, 3, 3, 4]]
    assert packing.sources.tolist() == [0, 1, 2, 10, 11, 12, 13, 15, 16, 20, 21, 22, 23, 24, 25]
    assert packing.places.tolist() == [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    assert pack_patches(widths, stride=5, row=6, multiple=4).segments.shape == (4, 6)


@pytest.mark.parametrize("stages", [2, 3])
def test_packed_patches_give_what_patches_run_alone_give(components, stages: int, monkeypatch) -> None:
    """A backbone that keeps segments apart runs the patches packed in rows; each patch's outputs are
    those of the patch run alone (batched by width), in loss and gradients."""
    model = tiny_model(components, stages).double().train()
    ids = text_tokens(3, 60)
    starts = starts_by_rule(model)(ids)
    results = []
    for packed in (True, False):
        if not packed:
            monkeypatch.setattr(varying_patches, "_run_packed", varying_patches._run_by_width)
        model.zero_grad()
        loss = model.loss(ids, starts=starts).loss
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (packed_loss, packed_grads), (alone_loss, alone_grads) = results
    assert packed_loss == pytest.approx(alone_loss, rel=1e-12)
    for a, b in zip(packed_grads, alone_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backbones", STACKS, ids="-".join)
def test_varying_patches_are_causal(components, backbones: tuple[str, ...]) -> None:
    model = tiny_model(components, len(backbones), backbones)
    ids = text_tokens(2, 40)
    starts_of = starts_by_rule(model)
    sizes = torch.diff(torch.cat((starts_of(ids)[0].nonzero().flatten(), torch.tensor([40]))))
    assert len(set(sizes.tolist())) > 2  # patches of several lengths
    # not bit-exact: a later patch's length changes which patches share a byte-level batch, and a
    # batched product's rounding depends on its batch; a leak moves logits by far more than 1e-12
    assert_model_causal(model, ids=ids, starts_of=starts_of, positions=range(0, 40, 4), atol=1e-12)


@pytest.mark.parametrize("stages", [2, 3])
def test_full_patches_reproduce_the_fixed_path(components, stages: int) -> None:
    model = tiny_model(components, stages).double().eval()
    ids = torch.randint(0, 256, (2, 29))
    longest = model.patch_sizes[-1]
    starts = torch.arange(29).expand(2, -1) % longest == 0
    torch.testing.assert_close(model(ids, starts=starts), model(ids), rtol=0, atol=1e-10)
    starts = torch.zeros_like(starts)  # the longest cut makes the same patches
    torch.testing.assert_close(model(ids, starts=starts), model(ids), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backbones", STACKS, ids="-".join)
def test_packed_samples_with_varying_patches_score_as_if_alone(
    components, backbones: tuple[str, ...]
) -> None:
    model = tiny_model(components, len(backbones), backbones).double().train()
    starts_of = starts_by_rule(model)
    samples = [text_tokens(1, n)[0] for n in (17, 4, 30)]
    ids = torch.cat(samples)[None]
    starts = torch.cat([starts_of(s[None])[0] for s in samples])[None]
    begins = torch.zeros_like(starts)
    begins[0, [0, 17, 21]] = True
    packed = model(ids, begins, starts)[0]
    offset = 0
    for sample in samples:
        alone = model(sample[None], starts=starts_of(sample[None]))[0]
        torch.testing.assert_close(packed[offset : offset + len(sample)], alone, rtol=0, atol=1e-10)
        offset += len(sample)
    # the loss and its gradients are those of the samples one by one
    model.zero_grad()
    model.loss(ids, begins=begins, starts=starts).loss.backward()
    packed_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    total = sum(
        F.cross_entropy(model(s[None], starts=starts_of(s[None]))[0], s, reduction="sum") for s in samples
    )
    (total / ids.shape[1]).backward()
    alone_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(packed_grads) == len(alone_grads) == len(list(model.parameters()))  # every parameter learns
    for a, b in zip(packed_grads, alone_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_loss_with_varying_patches_is_the_weighted_cross_entropy_of_the_logits(components) -> None:
    model = tiny_model(components, 2).train()
    ids = text_tokens(2, 33)
    starts = starts_by_rule(model)(ids)
    weights = torch.rand(2, 33)
    result = model.loss(ids, weights, starts=starts)
    ce = F.cross_entropy(model(ids, starts=starts).transpose(1, 2), ids, reduction="none")
    assert result.loss.item() == pytest.approx(((ce * weights).sum() / weights.sum()).item(), rel=1e-5)
    result.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_harness_catches_boundaries_that_look_ahead(components) -> None:
    """A patch that ends before a space (its start decided by the token after it) reveals that space to
    the state predicting it: the causality check must fail. (A start decided by its own token is safe:
    the state predicting that token is the same whether a patch starts there or not.)"""
    model = tiny_model(components, 2)

    def ahead(ids: torch.Tensor) -> torch.Tensor:
        return F.pad(ids[:, 1:] == ord(" "), (0, 1))

    ids = text_tokens(2, 40)
    with pytest.raises(AssertionError, match="moved"):
        assert_model_causal(model, ids=ids, starts_of=ahead, positions=range(4, 40), atol=1e-12)
    assert_model_causal(model, ids=ids, starts_of=lambda ids: ids == ord(" "), positions=range(4, 40, 5))


def generate_cached(
    model: MultiscaleDecoder, prompts: list[torch.Tensor], max_new: int, rules: dict
) -> list[list[int]]:
    """Greedy decoding through the decoder's cache with boundaries placed online by ``rules``."""
    cache = model.allocate_cache(len(prompts), max(len(p) for p in prompts) + max_new + 1, rules)
    for row, prompt in enumerate(prompts):
        model.prefill(prompt[None, :-1], cache, torch.tensor([row]))
    logits = model.step(torch.stack([p[-1] for p in prompts]), cache)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new):
        tokens = sample_next(logits, Sampling(), None)
        for row, token in enumerate(tokens.tolist()):
            out[row].append(token)
        logits = model.step(tokens, cache)
    return out


@pytest.mark.parametrize(
    "backbones", [("transformer",) * 2, ("transformer",) * 3, ("mamba", "transformer")], ids="-".join
)
def test_cached_generation_with_online_boundaries_equals_uncached(
    components, backbones: tuple[str, ...]
) -> None:
    model = tiny_model(components, len(backbones), backbones).eval()
    with torch.no_grad():  # a bias toward spaces: generated text has words, so patches of many lengths
        model.to_logits.bias[ord(" ")] += 2.0
    # phases across patch boundaries: prompts ending inside the header, on a word start, inside words
    full = text_tokens(1, 30)[0]
    prompts = [full[:n] for n in (1, 3, 9, 16, 16, 30)]
    cached = generate_cached(model, prompts, 16, RULES)
    for prompt, tokens in zip(prompts, cached, strict=True):
        assert tokens == generate_uncached(model, prompt, 16, RULES)
    assert len({t for row in cached for t in row}) > 5, "a degenerate model would make this test vacuous"
    placed = patch_starts(np.array(prompts[-1].tolist() + cached[-1]), RULES, model.patch_sizes[-1])
    assert len(set(np.diff(np.flatnonzero(placed)).tolist())) > 2, "generated patches of one length"


@pytest.mark.parametrize("stages", [2, 3])
def test_mblm_stages_take_varying_patches(components, stages: int) -> None:
    """mblm's own blocks (fixed positions in the byte-level stage included): causal, packed samples as
    if alone, and cached generation equal to the full forward."""
    model = build_model(model_config(stages), components).double().eval()
    starts_of = starts_by_rule(model)
    assert_model_causal(
        model, ids=text_tokens(2, 30), starts_of=starts_of, positions=range(0, 30, 5), atol=1e-12
    )
    samples = [text_tokens(1, n)[0] for n in (11, 19)]
    starts = torch.cat([starts_of(s[None])[0] for s in samples])[None]
    begins = torch.zeros_like(starts)
    begins[0, [0, 11]] = True
    packed = model(torch.cat(samples)[None], begins, starts)[0]
    alone = torch.cat([model(s[None], starts=starts_of(s[None]))[0] for s in samples])
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-10)
    prompts = [samples[1][:n] for n in (2, 9, 19)]
    for prompt, tokens in zip(prompts, generate_cached(model, prompts, 12, RULES), strict=True):
        assert tokens == generate_uncached(model, prompt, 12, RULES)


def test_cpu_autocast_rounds_patch_batches_up_and_keeps_the_loss(components, monkeypatch) -> None:
    """Under CPU bf16 autocast the packed rows of patches are topped up to a multiple of
    ``PACKED_ROWS_MULTIPLE`` rows (few shapes, kernels reused); the extra rows run nothing that counts."""
    model = tiny_model(components, 2).eval()
    ids = text_tokens(3, 50)
    starts = starts_by_rule(model)(ids)
    full = model.loss(ids, starts=starts).loss.item()
    packed_rows: list[int] = []

    def counted(*args: int | torch.Tensor) -> varying_patches.PatchPacking:
        packing = pack_patches(*args)
        packed_rows.append(packing.segments.shape[0])
        return packing

    monkeypatch.setattr(varying_patches, "pack_patches", counted)
    losses = {}
    for multiple in (1, 8):
        monkeypatch.setattr(varying_patches, "PACKED_ROWS_MULTIPLE", multiple)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            losses[multiple] = model.loss(ids, starts=starts).loss.item()
    unrounded, rounded = packed_rows[-2:]
    assert unrounded % 8 != 0 and rounded == -(-unrounded // 8) * 8
    assert losses[8] == pytest.approx(losses[1], rel=1e-2)
    assert losses[1] == pytest.approx(full, rel=0.05)  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("stages", [2, 3])
def test_answer_only_loss_runs_only_the_weighted_patches(components, stages: int, monkeypatch) -> None:
    """Weights on a few tokens: only the patches predicting them run, with the dense loss and gradients."""
    model = tiny_model(components, stages).double().train()
    ids = text_tokens(2, 40)
    starts = starts_by_rule(model)(ids)
    begins = torch.zeros_like(starts)
    begins[:, [0, 20]] = True
    starts[:, 20] = True
    weights = torch.zeros(2, 40)
    weights[0, [20, 31, 32]] = 1.0  # a packed sample's first token, and two inside it
    weights[1, 5] = 0.5
    ran: list[int] = []  # byte-level rows run
    run, last = model._run, model.num_stages - 1
    monkeypatch.setattr(
        model, "_run", lambda s, x, seg=None: (s == last and ran.append(len(x))) or run(s, x, seg)
    )
    sparse = model.loss(ids, weights, begins, starts)
    assert sum(ran) <= 5  # one patch a weighted token, and the first patch (which always runs)
    model.zero_grad()
    sparse.loss.backward()
    sparse_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ce = F.cross_entropy(model(ids, begins, starts).transpose(1, 2), ids, reduction="none")
    dense = (ce * weights).sum() / weights.sum()
    dense.backward()
    assert sparse.loss.item() == pytest.approx(dense.item(), rel=1e-9)
    for a, b in zip(sparse_grads, [p.grad for p in model.parameters() if p.grad is not None], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
