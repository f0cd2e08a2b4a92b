"""Importing an mblm 0.4.2 model: its trainer's YAML ``params`` and its ``.pth`` state dict become an mbp
model config and an mbp state dict.

What maps to what (mblm -> mbp; stage s counts from 0, global first):
- ``start_tokens.s`` -> ``start_tokens.s``; ``to_next_stage_proj.s.1`` -> ``projections.s``.
- ``token_embs_rev.0.embedding`` (bytes of the last stage) -> ``embeddings.{n-1}``;
  ``token_embs_rev.k`` (k >= 1, stage n-1-k): ``embedding`` -> ``bytes``, ``_post.1/2/3`` ->
  ``norm_in/proj/norm_out``.
- ``pos_embs.s`` (``pos_emb_type: fixed``) -> ``backbones.s.pos``.
- transformer stages -> ``mblm-transformer``; Mamba2 stages (mamba-ssm) -> ``mamba``, whose parameter
  names and shapes are mamba-ssm's own (``norm_f`` -> ``norm``).
- Vocabulary: mbp rows 0..255 are mblm's bytes; mbp's PAD and its markers (BOS, EOS, ...) take mblm's pad
  row, in the embeddings and in ``to_logits``: an imported model reads markers as padding and predicts
  them as rarely as it predicts padding, until fine-tuning teaches them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import yaml
from mbp.api import PAD, VOCAB_SIZE, CheckpointError, ConfigError

PARAMS_KEYS = {
    "num_tokens",
    "pad_token_id",
    "hidden_dims",
    "num_layers",
    "seq_lens",
    "train_checkpoint_chunks",
    "block",
    "input_seq_len",
}
TRANSFORMER_KEYS = {
    "block_type",
    "pos_emb_type",
    "attn_head_dims",
    "attn_num_heads",
    "attn_use_rot_embs",
    "attn_dropout",
    "ff_multiplier",
    "ff_dropout",
    "use_flash_attn",  # a kernel choice: the same arithmetic either way
}
MAMBA_KEYS = {"block_type", "pos_emb_type", "d_state", "d_conv", "expand", "headdim", "dropout"}
MAMBA1_NAMES = ("x_proj", "dt_proj")
"""Parameters only mambapy's Mamba-1 has: what mblm trains when mamba-ssm is missing (CPU)."""


def read_params(path: Path) -> dict[str, Any]:
    """The ``params`` section of an mblm training YAML (``train``/``io`` may be absent)."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: mblm config not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not a readable YAML file: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict) or not isinstance(document.get("params"), dict):
        raise ConfigError(f"{path}: expected a 'params:' mapping (the model section mblm's trainer writes)")
    return document["params"]


def _int_list(params: dict[str, Any], key: str, where: str) -> list[int]:
    value = params.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{where}: params.{key}: expected a list of positive integers, got {value!r}")
    return value


def _int(params: dict[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{where}: params.{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def stage_blocks(params: dict[str, Any], stages: int, where: str) -> list[dict[str, Any]]:
    block = params.get("block")
    blocks: list[Any] = block if isinstance(block, list) else [block] * stages
    if len(blocks) != stages or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{where}: params.block: expected one block mapping, or a list of {stages}")
    return [dict(b) for b in blocks]


def _backbone(block: dict[str, Any], s: int, seq_len: int, where: str) -> dict[str, Any]:
    """The mbp backbone reference for mblm stage block ``block`` (stage ``s`` counts from 0)."""
    key = f"{where}: params.block[{s}]"
    kind = block.get("block_type")
    pos = block.get("pos_emb_type")
    if pos not in (None, "fixed", "rope"):
        raise ConfigError(f"{key}.pos_emb_type: unsupported value {pos!r} (mblm knows fixed, rope)")
    if kind == "transformer":
        allowed = TRANSFORMER_KEYS
    elif isinstance(kind, str) and "mamba" in kind:
        allowed = MAMBA_KEYS
    elif kind == "transformerEncoder":
        raise ConfigError(f"{key}.block_type: 'transformerEncoder' is not causal; mbp stages are decoders")
    else:
        raise ConfigError(f"{key}.block_type: unsupported block {kind!r} (importable: transformer, mamba2)")
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: unknown key of an mblm {kind} block (known: {', '.join(sorted(allowed))})"
        )
    if kind == "transformer":
        return _transformer(block, s, seq_len, key)
    return _mamba(block, key)


def _transformer(block: dict[str, Any], s: int, seq_len: int, key: str) -> dict[str, Any]:
    """The ``mblm-transformer`` reference for an mblm transformer block (``key`` names it in errors)."""
    missing = [k for k in ("attn_head_dims", "attn_num_heads", "attn_use_rot_embs") if k not in block]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: required key of an mblm transformer block is missing")
    pos = block.get("pos_emb_type")
    if pos == "rope" and s > 0:
        # mblm rotates stage s's byte embeddings before adding the stage above's output; mbp's wiring
        # adds first and the backbone sees only the sum, so the rotation cannot be reproduced.
        raise ConfigError(
            f"{key}.pos_emb_type: 'rope' on stage {s + 1} is not importable (mblm rotates the embeddings "
            "before adding the previous stage's output; only stage 1 has none)"
        )
    ref: dict[str, Any] = {
        "type": "mblm-transformer",
        "heads": block["attn_num_heads"],
        "head_dim": block["attn_head_dims"],
        "rotary": bool(block["attn_use_rot_embs"]),
        "ff_mult": block.get("ff_multiplier", 2),
        "attn_dropout": block.get("attn_dropout", 0.0),
        "ff_dropout": block.get("ff_dropout", 0.0),
        "pos_emb": pos,
    }
    if pos == "fixed":
        ref["max_positions"] = seq_len
    return ref


def _mamba(block: dict[str, Any], key: str) -> dict[str, Any]:
    """The ``mamba`` reference for an mblm Mamba-2 block (``key`` names it in errors)."""
    if block.get("block_type") == "mamba1":
        raise ConfigError(f"{key}.block_type: {MAMBA1_REASON}")
    if block.get("pos_emb_type") is not None:
        raise ConfigError(f"{key}.pos_emb_type: mbp's mamba backbone takes no positional embedding")
    for name in ("d_state", "d_conv", "expand", "headdim"):
        _int(block, name, key, 1)
    return {
        "type": "mamba",
        "state": block["d_state"],
        "conv": block["d_conv"],
        "expand": block["expand"],
        "headdim": block["headdim"],
    }


MAMBA1_REASON = (
    "a Mamba-1 (mambapy) stage: mblm falls back to it where mamba-ssm is missing (CPU), and mbp's mamba "
    "backbone is Mamba-2, a different layer (x_proj/dt_proj and a matrix A), so no weights map exactly"
)


def model_config(params: dict[str, Any], where: str) -> dict[str, Any]:
    """mbp's model config (``ModelConfig`` fields) for mblm ``params``; unknown or unsupported keys fail."""
    unknown = sorted(set(params) - PARAMS_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: params.{unknown[0]}: unknown mblm config key (known: {', '.join(sorted(PARAMS_KEYS))})"
        )
    dims = _int_list(params, "hidden_dims", where)
    layers = params.get("num_layers")
    if not isinstance(layers, list) or not all(isinstance(v, int) and v >= 0 for v in layers):
        raise ConfigError(f"{where}: params.num_layers: expected a list of integers >= 0, got {layers!r}")
    seq_lens = _int_list(params, "seq_lens", where)
    if not len(dims) == len(layers) == len(seq_lens):
        raise ConfigError(f"{where}: params.seq_lens: hidden_dims, num_layers and seq_lens differ in length")
    vocab = _int(params, "num_tokens", where, 1)
    pad = _int(params, "pad_token_id", where)
    if vocab > 257 or pad >= vocab or (vocab == 257 and pad != 256):
        raise ConfigError(
            f"{where}: params.num_tokens: {vocab} tokens with pad {pad} do not map to mbp's vocabulary "
            "(importable: up to 256 bytes plus a pad token with id 256)"
        )
    chunks = params.get("train_checkpoint_chunks")
    blocks = stage_blocks(params, len(dims), where)
    stages = []
    for s, (dim, count, seq_len, block) in enumerate(zip(dims, layers, seq_lens, blocks, strict=True)):
        stages.append(
            {
                "backbone": _backbone(block, s, seq_len, where),
                "dim": dim,
                "layers": count,
                # stage 1's length only binds where a fixed position table does (as in mblm)
                "seq_len": seq_len if s > 0 or block.get("pos_emb_type") == "fixed" else None,
                "checkpoint": bool(chunks) and s > 0,
            }
        )
    return {"stages": stages}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an mblm ``.pth`` (``{"MODEL": state, "LOSS": x}`` or the bare state dict), loaded
    with ``weights_only=True``: tensors and plain containers only, never code."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a loadable mblm state dict (weights_only load: {first})"
        ) from None
    state = loaded.get("MODEL", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: expected a state dict of tensors (or mblm's {{'MODEL': ..., 'LOSS': ...}})"
        )
    return state


def _vocab_rows(vocab: int, pad: int) -> torch.Tensor:
    """For each mbp token id, the mblm row it takes: bytes their own (pad where mblm has none), PAD and
    markers mblm's pad row."""
    rows = [b if b < vocab else pad for b in range(256)] + [pad] * (VOCAB_SIZE - 256)
    assert rows[PAD] == pad
    return torch.tensor(rows)


def map_state(
    state: dict[str, torch.Tensor], params: dict[str, Any], config: dict[str, Any], source: Path
) -> dict[str, torch.Tensor]:
    """mbp's state dict for mblm's ``state``; every mblm tensor must be used exactly once."""
    n = len(config["stages"])
    rows = _vocab_rows(params["num_tokens"], params["pad_token_id"])
    left = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in left:
            raise CheckpointError(f"{source}: tensor '{name}' missing (does the config match these weights?)")
        return left.pop(name)

    for s in range(n):
        out[f"start_tokens.{s}"] = take(f"start_tokens.{s}")
    out[f"embeddings.{n - 1}.weight"] = take("token_embs_rev.0.embedding.weight")[rows]
    for k in range(1, n):
        s, prefix = n - 1 - k, f"token_embs_rev.{k}"
        out[f"embeddings.{s}.bytes.weight"] = take(f"{prefix}.embedding.weight")[rows]
        for index, name in ((1, "norm_in"), (2, "proj"), (3, "norm_out")):
            for part in ("weight", "bias"):
                out[f"embeddings.{s}.{name}.{part}"] = take(f"{prefix}._post.{index}.{part}")
    for s in range(n - 1):
        for part in ("weight", "bias"):
            out[f"projections.{s}.{part}"] = take(f"to_next_stage_proj.{s}.1.{part}")
    out["to_logits.weight"] = take("to_logits.weight")[rows]
    out["to_logits.bias"] = take("to_logits.bias")[rows]
    for s, stage in enumerate(config["stages"]):
        if stage["backbone"].get("pos_emb") == "fixed":
            out[f"backbones.{s}.pos.weight"] = take(f"pos_embs.{s}.weight")
        mapper = _transformer_names if stage["backbone"]["type"] == "mblm-transformer" else _mamba_names
        prefix = f"stage_models.{s}."
        for name in [k for k in left if k.startswith(prefix)]:
            target = mapper(name[len(prefix) :], s, source, left[name])
            if target is not None:
                out[f"backbones.{s}.{target}"] = left[name]
            left.pop(name)
    if left:
        raise CheckpointError(
            f"{source}: tensor '{next(iter(left))}' has no counterpart in mbp ({len(left)} left)"
        )
    return out


ATTENTION_NAMES = {"norm.g": "norm.weight", "to_q.weight": "to_q.weight", "to_kv.weight": "to_kv.weight"}
ATTENTION_NAMES["to_out.weight"] = "to_out.weight"
FEED_FORWARD_NAMES = {"0.g": "norm.weight", "1.weight": "up.weight", "1.bias": "up.bias"}
FEED_FORWARD_NAMES.update({"4.weight": "down.weight", "4.bias": "down.bias"})
"""MEGABYTE's FeedForward is Sequential(RMSNorm, Linear, GELU, Dropout, Linear): indices 0, 1 and 4."""


def _transformer_names(name: str, s: int, source: Path, tensor: torch.Tensor) -> str | None:
    """mblm ``TransformerDecoder`` names -> ``mblm-transformer`` names (``None``: a derived buffer)."""
    if name == "rotary_emb.inv_freq":
        return None  # recomputed by the backbone with the same float32 formula
    if name == "norm.g":
        return "norm.weight"
    parts = name.split(".")
    if len(parts) >= 4 and parts[0] == "layers":
        layer, sub, rest = parts[1], parts[2], ".".join(parts[3:])
        if sub == "0" and rest in ATTENTION_NAMES:
            return f"layers.{layer}.attn.{ATTENTION_NAMES[rest]}"
        if sub == "1" and rest in FEED_FORWARD_NAMES:
            return f"layers.{layer}.ff.{FEED_FORWARD_NAMES[rest]}"
    raise CheckpointError(
        f"{source}: tensor 'stage_models.{s}.{name}' is not part of an mblm transformer stage"
    )


MAMBA2_MIXER_NAMES = {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D"}
MAMBA2_MIXER_NAMES |= {"norm.weight", "out_proj.weight"}
"""mamba-ssm ``Mamba2`` parameters at mblm's settings (no biases but conv's, ngroups 1, gated RMSNorm):
the names and shapes mbp's ``mamba`` backbone uses too."""


def _mamba_names(name: str, s: int, source: Path, tensor: torch.Tensor) -> str:
    """mblm ``Mamba2Mixer`` names (mamba-ssm ``Block``/``Mamba2``) -> ``mamba`` backbone names."""
    if any(f".{marker}." in f".{name}" for marker in MAMBA1_NAMES) or (
        name.endswith("A_log") and tensor.ndim == 2
    ):
        raise CheckpointError(f"{source}: stage {s + 1} is {MAMBA1_REASON}")
    if name == "norm_f.weight":
        return "norm.weight"
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "layers":
        rest = ".".join(parts[2:])
        if rest == "norm.weight" or (
            rest.startswith("mixer.") and rest[len("mixer.") :] in MAMBA2_MIXER_NAMES
        ):
            return name
    raise CheckpointError(
        f"{source}: tensor 'stage_models.{s}.{name}' is not part of a mamba-ssm Mamba2 stage"
    )


def data_seq_len(params: dict[str, Any], config: dict[str, Any]) -> int:
    """The pipeline's training length: mblm's ``input_seq_len`` (else the full context), rounded up to a
    whole number of patches."""
    patch = math.prod(s.get("patch") or s["seq_len"] for s in config["stages"][1:])
    length = params.get("input_seq_len") or math.prod(params["seq_lens"])
    if not isinstance(length, int) or length <= 0:
        raise ConfigError(f"params.input_seq_len: expected a positive integer, got {length!r}")
    return -(-length // patch) * patch
