"""What a run settles before its first step, as one frozen value: its rows, patch, precision, steps,
held-out samples, variation and optimizer.

The value comes from one of three sources: planned from the data (``mbp.planning.plan``), agreed
across processes (rank 0's), or recorded by the checkpoint a run resumes from
(``mbp.planning.settle``). It reaches the pipeline in one place, ``applied``, which writes it into
the pipeline a checkpoint records. A recount during the run changes only ``steps`` (``with_steps``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mbp.config.boundary_rules import RuleConfig
from mbp.resolve import Resolved
from mbp.train.precision import PrecisionChoice


@dataclass(frozen=True)
class RunSettings:
    row_len: int
    """Tokens a row (``data.seq_len``, given or planned)."""
    patch: int | None
    """The byte-level stage's patch, its longest where ``boundaries`` place them (given, or planned
    from the data); None: a model of one stage."""
    boundaries: dict[str, RuleConfig] | None
    """Where byte-level patches start, by codec (``model.boundaries``: given, or planned from the
    codecs' declared boundaries where the pipeline leaves the patch unset); None: fixed patches."""
    precision: PrecisionChoice
    steps: int
    """The run's bound: ``train.steps`` given, planned, recorded, or counted again during the run."""
    eval_samples: int | None
    """Held-out samples an evaluation reads (``data.max_eval_samples``); None: all of them."""
    augment: bool | None
    """Whether training samples vary (``data.augment``); None: as each codec says."""
    optimizer: str
    """``train.optimizer`` as the run trains it (AdamW under FSDP, or as a resumed checkpoint's state)."""

    @classmethod
    def of(cls, resolved: Resolved, precision: PrecisionChoice) -> RunSettings:
        """The settings ``resolved``'s pipeline holds once every one is given."""
        pipeline = resolved.pipeline
        data, train, model = pipeline.data, pipeline.train, pipeline.model
        if data.seq_len is None or train.steps is None:
            raise ValueError("a run's settings are read from a pipeline whose rows and steps are settled")
        return cls(
            row_len=data.seq_len,
            patch=model.patches[-1] if model.patches else None,
            boundaries=model.boundaries if isinstance(model.boundaries, dict) else None,
            precision=precision,
            steps=train.steps,
            eval_samples=data.max_eval_samples,
            augment=data.augment,
            optimizer=train.optimizer,
        )

    def with_steps(self, steps: int) -> RunSettings:
        return dataclasses.replace(self, steps=steps)

    def applied(self, resolved: Resolved) -> Resolved:
        """``resolved`` with these settings written into its pipeline, which checkpoints record; its
        encoder rebuilt only where a setting the encoder reads changed (the patch, ``data.augment``)."""
        pipeline = resolved.pipeline
        model = pipeline.model
        if self.patch is not None and model.leaves_byte_patch:
            model = model.with_byte_patch(self.patch)
            if model.boundary_rules is None and self.boundaries is not None:
                model = model.model_copy(update={"boundaries": self.boundaries})
        data = pipeline.data.model_copy(
            update={"seq_len": self.row_len, "max_eval_samples": self.eval_samples, "augment": self.augment}
        )
        train = pipeline.train.model_copy(
            update={"steps": self.steps, "precision": self.precision.precision, "optimizer": self.optimizer}
        )
        settled = pipeline.model_copy(update={"model": model, "data": data, "train": train})
        if model == pipeline.model and self.augment == pipeline.data.augment:
            return dataclasses.replace(resolved, pipeline=settled)
        return resolved.with_encoding(settled)
