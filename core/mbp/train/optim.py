"""The optimizer every run uses: Muon for the byte-level stage's matrices and AdamW for the rest
(``train.optimizer: muon``, the default), or AdamW for everything (``adamw``); weight decay on matrices
only."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from mbp.config import TrainConfig
from mbp.errors import ConfigError
from mbp.model.decoder import MultiscaleDecoder
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


def _adamw(
    decayed: list[nn.Parameter], plain: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
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


def make_optimizer(model: MultiscaleDecoder, train: TrainConfig) -> TrainingOptimizer:
    """``train.optimizer`` for ``model``, over the parameter groups it names (``param_groups``)."""
    groups = model.param_groups()
    if train.optimizer == "adamw" or not groups.byte_level:  # a byte-level stage without linear maps
        return _adamw(groups.decayed, groups.plain, train.lr, train.weight_decay)
    muon = Muon(groups.byte_level, lr=train.lr, weight_decay=train.weight_decay)
    byte_level = {id(p) for p in groups.byte_level}
    rest = [p for p in groups.decayed if id(p) not in byte_level]
    return MuonWithAdamW(muon, _adamw(rest, groups.plain, train.lr, train.weight_decay))
