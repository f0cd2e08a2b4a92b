"""The optimizer every run uses: Muon for the byte-level stage's matrices and AdamW for the rest
(``train.optimizer: muon``, the default), or AdamW for everything (``adamw``); weight decay on matrices
only."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from mbp.config import TrainConfig
from mbp.errors import ConfigError
from mbp.resolve import Resolved
from mbp.train.muon import Muon, MuonWithAdamW


class TrainingOptimizer(Protocol):
    """What a run asks of its optimizer: a torch optimizer, or ``MuonWithAdamW``."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...

    def step(self) -> Any: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def _decays(name: str, p: nn.Parameter) -> bool:
    return p.ndim >= 2 and "start_tokens" not in name


def _adamw(named: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in named if _decays(n, p)]
    rest = [p for n, p in named if not _decays(n, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # the fused kernel updates every parameter in one pass (CPU and CUDA); identical arithmetic
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


def settled_optimizer(resolved: Resolved, recorded: str | None = None) -> Resolved:
    """``resolved`` with the optimizer its run trains with, which checkpoints then record: ``recorded``,
    the one a resumed checkpoint's state belongs to, else ``train.optimizer``. FSDP gives each process a
    slice of every matrix, and orthogonalizing a slice is not orthogonalizing the matrix: a run with
    ``train.strategy: fsdp`` uses AdamW, in a world of one process too, so that its checkpoints resume
    under either strategy."""
    train = resolved.pipeline.train
    chosen = recorded or train.optimizer
    if chosen == "muon" and train.strategy == "fsdp":
        if recorded:
            raise ConfigError(
                "the checkpoint holds Muon's optimizer state, which FSDP cannot step (it slices the "
                "matrices Muon orthogonalizes): resume with train.strategy=ddp"
            )
        chosen = "adamw"
    return resolved if chosen == train.optimizer else resolved.with_settings("train", optimizer=chosen)


def describe_optimizer(
    optimizer: TrainingOptimizer, train: TrainConfig, asked: str, recorded: str | None = None
) -> str:
    """What ``make_optimizer`` built (AdamW alone where the byte-level stage has no linear maps), and
    why, where the pipeline's ``train.optimizer`` (``asked``) was Muon and the run settled on AdamW: a
    resumed checkpoint's ``recorded`` AdamW state, or FSDP (a reason is worth a word only then)."""
    if isinstance(optimizer, MuonWithAdamW):
        return "Muon on the byte-level stage and AdamW on the rest"
    if asked != "muon" or train.optimizer != "adamw":
        return "AdamW"
    if recorded == "adamw":
        return "AdamW (the resumed checkpoint holds AdamW's state)"
    return "AdamW" + (" (FSDP shards the matrices Muon needs whole)" if train.strategy == "fsdp" else "")


def make_optimizer(model: nn.Module, train: TrainConfig) -> TrainingOptimizer:
    """``train.optimizer`` for ``model`` (a ``MultiscaleDecoder``)."""
    named = list(model.named_parameters())
    backbones = getattr(model, "backbones", None)
    if train.optimizer == "adamw" or backbones is None:
        return _adamw(named, train.lr, train.weight_decay)
    # the weights of its linear maps: not a state-space model's 2-D decay rates (Mamba's A_log)
    linear = (m.weight for m in backbones[-1].modules() if isinstance(m, nn.Linear))
    byte_level = {id(p) for p in linear if p.requires_grad}
    matrices = [p for _, p in named if id(p) in byte_level]
    if not matrices:  # a byte-level stage of no layers, or of none made of linear maps
        return _adamw(named, train.lr, train.weight_decay)
    muon = Muon(matrices, lr=train.lr, weight_decay=train.weight_decay)
    rest = [(n, p) for n, p in named if id(p) not in byte_level]
    return MuonWithAdamW(muon, _adamw(rest, train.lr, train.weight_decay))
