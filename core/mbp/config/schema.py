"""The shape of a pipeline: the pydantic models a registry file's pipelines are read into (pass one of
validation). Component references stay unchecked here (``Ref``): their parameters belong to the plugins
that register them (``mbp.config.checks``). Settings a run plans when they are unset are described from
the planner's numbers (``mbp.planning.constants``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.functional_validators import BeforeValidator
from pydantic_core import PydanticCustomError

from mbp.boundaries import BoundaryRule
from mbp.config.boundary_rules import RuleConfig, rules_of, to_config
from mbp.planning.constants import (
    AUGMENT_PASSES,
    DEFAULT_BATCH,
    DEFAULT_PATCH,
    EVAL_SHARE,
    FEWEST_STEPS,
    PASSES,
    ROW_COVERAGE,
    RUN_MINUTES,
    SHORTEST_ROW,
)


def _no_boolean(kind: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError("number_type", f"Input should be a valid {kind}, not a boolean")
        return value

    return BeforeValidator(check)


Count = Annotated[int, _no_boolean("integer")]
"""An int that is no boolean, where pydantic reads ``true`` as 1 (``train.steps=true`` would train one
step)."""
Rate = Annotated[float, _no_boolean("number")]
"""A float that is no boolean; YAML's ``lr: 3e-4`` is a string, which pydantic reads as a number."""


class Strict(BaseModel):
    """Unknown keys are errors, and no float is infinite or NaN (an infinite learning rate trains
    nothing but NaN)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Ref(BaseModel):
    """A reference to a registered component; its parameters are checked in pass two."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


class StageConfig(Strict):
    backbone: Ref
    dim: Count = Field(gt=0)
    layers: Count = Field(ge=0)
    seq_len: Count | None = Field(
        default=None,
        gt=0,
        description="stage 1: most patches (unset: unbounded); later: deprecated name of patch",
    )
    """Stage 1: most patches (None: unbounded). Later stages: deprecated alias of ``patch``."""
    patch: Count | None = Field(
        default=None,
        gt=0,
        description=(
            "later stages: units of the stage below (bytes at the last) per unit; "
            f"unset at the last: one row of the data's rows (mbp run plans it), else {DEFAULT_PATCH}"
        ),
    )
    """Later stages: units of the stage below (bytes for the last stage) per unit of the stage above.
    The byte-level stage's may be unset: ``mbp run`` plans it from the training data (one row of an
    image's pixels or a spectrogram's frames, ``mbp.planning.patch_plan``), else ``DEFAULT_PATCH``."""
    checkpoint: bool = False


class ModelConfig(Strict):
    stages: list[StageConfig] = Field(min_length=1)
    loss_chunk: Count | None = Field(default=None, gt=0)
    dropout: Rate | None = Field(
        default=None, ge=0, lt=1, description="for backbones taking `dropout` but setting none; unset: head's"
    )
    """Dropout of every stage whose backbone takes a ``dropout`` parameter and does not set one. None: the
    head's (``HeadDefaults.dropout``): 0.1 for ``vqa``/``classify``, 0 for ``lm``."""
    boundaries: dict[str, RuleConfig] | Literal["codecs", "entropy"] | None = Field(
        default=None,
        description="where byte-level patches start, by codec; unset or codecs: as each codec declares, "
        "planned by mbp run where the byte-level patch is unset (a given patch fixes one length); entropy: "
        "codecs, with text where a byte model trained on the run's data is uncertain",
    )
    """Where the byte-level patches of each codec's payloads start (``mbp.config.boundary_rules``), the
    last stage's ``patch`` the longest; codecs not named get fixed patches of that length, and segment
    headers and markers start patches of their own (a text payload's first word shares its header's).
    None or ``"codecs"``: ``mbp run`` plans the rules from the codecs' declared boundaries
    (``mbp.planning.boundary_plan``) where the byte-level patch is unset, and every patch is the last
    stage's ``patch`` long where it is given; ``"entropy"``: planned as ``"codecs"``, but a codec
    declaring word starts gets an entropy rule trained on the run's training data
    (``mbp.planning.entropy_fit``)."""

    @field_validator("stages")
    @classmethod
    def _inner_stages_have_patches(cls, stages: list[StageConfig]) -> list[StageConfig]:
        """Later stages read ``seq_len`` as ``patch`` (its deprecated name), stored as ``patch``."""
        if stages[0].patch is not None:
            raise ValueError("stage 1 has no patch: its seq_len is the most patches it takes")
        out = [stages[0]]
        for index, stage in enumerate(stages[1:], start=2):
            if stage.patch is not None and stage.seq_len not in (None, stage.patch):
                raise ValueError(
                    f"stage {index}: patch {stage.patch} and seq_len {stage.seq_len} disagree "
                    "(seq_len is the deprecated name of patch: give patch only)"
                )
            size = stage.patch or stage.seq_len
            if size is None and index < len(stages):  # the byte-level stage's is planned by the run
                raise ValueError(f"stage {index} needs patch (its patch size)")
            out.append(stage.model_copy(update={"patch": size, "seq_len": None}))
        return out

    @model_validator(mode="after")
    def _codecs_place_unset_patches(self) -> ModelConfig:
        """``boundaries: codecs`` plans where patches start in place of a fixed byte-level patch."""
        if self.boundaries in ("codecs", "entropy") and not self.leaves_byte_patch:
            raise ValueError(
                f"boundaries: {self.boundaries} places the byte-level patches: leave the last stage's patch "
                "unset (or drop boundaries for patches of that one length)"
            )
        return self

    @property
    def patches(self) -> list[int]:
        """Each later stage's patch; the byte-level stage's ``DEFAULT_PATCH`` while it is unset."""
        return [stage.patch or DEFAULT_PATCH for stage in self.stages[1:]]

    @property
    def leaves_byte_patch(self) -> bool:
        """Whether the byte-level stage's patch is left to the run (a later stage without one)."""
        return len(self.stages) > 1 and self.stages[-1].patch is None

    @property
    def patch_len(self) -> int:
        return math.prod(self.patches)

    @property
    def pack_align(self) -> int:
        """Where packed samples may start: any token with boundary rules, else a multiple of the patch."""
        return 1 if self.boundary_rules is not None else self.patch_len

    @property
    def boundary_rules(self) -> dict[str, BoundaryRule] | None:
        """``boundaries`` as ``mbp.boundaries`` rules by codec (None: fixed patches, or ``"codecs"`` or
        ``"entropy"`` not yet planned)."""
        return rules_of(self.boundaries) if isinstance(self.boundaries, dict) else None

    def with_boundaries(self, rules: dict[str, BoundaryRule], longest: int) -> ModelConfig:
        """This model with byte-level patches placed by ``rules``, none longer than ``longest``."""
        configs = {codec: to_config(rule) for codec, rule in rules.items()}
        return self.with_byte_patch(longest).model_copy(update={"boundaries": configs})

    @property
    def plans_boundaries(self) -> bool:
        """Whether ``mbp run`` plans boundary rules from the codecs: ``boundaries`` unset, ``codecs`` or
        ``entropy``, with the byte-level patch unset."""
        return self.boundaries in (None, "codecs", "entropy") and self.leaves_byte_patch

    def with_byte_patch(self, patch: int) -> ModelConfig:
        """This model with the byte-level stage's patch set to ``patch`` (a run's planned one)."""
        stages = [*self.stages[:-1], self.stages[-1].model_copy(update={"patch": patch})]
        return self.model_copy(update={"stages": stages})


class DataConfig(Strict):
    train_shards: list[str] = Field(default_factory=list)
    eval_shards: list[str] = Field(default_factory=list)
    seq_len: Count | None = Field(
        default=None,
        gt=0,
        description=(
            f"tokens a row; unset: holds {ROW_COVERAGE:.0%} of training samples, "
            f"about {SHORTEST_ROW} for shorter ones"
        ),
    )
    """Tokens a row. None: planned from the training samples (``mbp.planning``: ``RunSettings.row_len``)."""
    batch_size: Count | None = Field(
        default=None, gt=0, description=f"rows a step; unset: the head's (lm 1, else {DEFAULT_BATCH})"
    )
    """Rows a step. None: the head's (``HeadDefaults.batch_size``: 1 for ``lm``, else ``DEFAULT_BATCH``)."""
    shuffle_buffer: Count = Field(default=1000, ge=0)
    """Samples drawn at random from a pool this large (shard order shuffled too), so that a set written
    class by class still trains on mixed batches; 0 reads the shards in order."""
    pack: bool = True
    """Rows hold as many whole samples as fit, each starting on a patch boundary (evaluation always packs);
    ``false`` gives every sample a row of its own, mostly padding when samples are short."""
    max_eval_samples: Count | None = Field(
        default=None,
        gt=0,
        description="evaluate this many held-out samples, spread evenly over the set; unset: all, or "
        f"where their evaluations would take over {EVAL_SHARE:.0%} of a planned run, as many as fit it",
    )
    augment: bool | None = Field(
        default=None,
        description=(
            "vary training samples with the codecs that offer it (images shifted); "
            f"unset: when the run trains at least {AUGMENT_PASSES} passes over its training set"
        ),
    )
    """Whether fields whose codec leaves its own ``augment`` unset vary in training. None: planned
    (``mbp.planning.variation``) and written into the run's pipeline, so a resumed run keeps it."""
    workers: Count | None = Field(
        default=None,
        ge=0,
        description="processes that decode and encode training samples (0: the training process does); "
        "unset: the cores left after the step's, 0 where fewer than 2 are left",
    )
    """Decoding processes (``mbp.data.workers``); the batches are the same with any number."""


def settled_batch_size(data: DataConfig) -> int:
    """``data.batch_size``, for code that runs once resolution has filled it in from the head."""
    if data.batch_size is None:
        raise ValueError("data.batch_size is filled in from the head when the pipeline is resolved")
    return data.batch_size


def settled_seq_len(data: DataConfig) -> int:
    """``data.seq_len``, for code that runs once it is given or planned (a run reads
    ``RunSettings.row_len``)."""
    if data.seq_len is None:
        raise ValueError("data.seq_len is planned from the training samples before rows are made")
    return data.seq_len


class TrainConfig(Strict):
    steps: Count | None = Field(
        default=None,
        ge=0,
        description=(
            f"unset: {PASSES} passes over the training set, at least {FEWEST_STEPS} steps, "
            "at most the steps that fit train.minutes on this machine, evaluation included"
        ),
    )
    """None: planned from the training set by ``mbp.planning.plan`` before the run starts."""
    minutes: Rate = Field(
        default=RUN_MINUTES,
        gt=0,
        description=(
            "wall time a run with train.steps unset aims at, evaluation included, at the step time "
            f"measured on this machine; it still stops at {PASSES} passes"
        ),
    )
    """The budget a planned run's steps are counted from (``mbp.planning.budget``): the same recipe learns
    more where it may take longer, as on a machine without fast bf16 products, which steps a 4x slower
    (28x28 glyphs: 0.171 s a step in fp32 on a 2-core AMD EPYC, 0.042 s in bf16 on a 2-core AMX Xeon)."""
    optimizer: Literal["muon", "adamw"] = "muon"
    """``muon``: Muon for the byte-level stage's linear maps, AdamW for every other parameter
    (``mbp.train.muon``; King James in nine minutes on a 2-core CPU: 1.887 bits per byte against AdamW's
    1.955-1.979); ``adamw``: AdamW for everything (what FSDP runs use: Muon needs whole matrices)."""
    lr: Rate = Field(default=2e-3, gt=0)
    min_lr_ratio: Rate = Field(default=0.1, ge=0, le=1)
    warmup_steps: Count = Field(default=30, ge=0)
    weight_decay: Rate = Field(default=0.1, ge=0)
    grad_accum: Count = Field(default=1, gt=0)
    clip: Rate | None = Field(default=1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 autocast where the hardware multiplies bf16 fast (``auto``), or forced either way."""
    bf16: bool | None = None
    """Deprecated: ``bf16: true`` is ``precision: bf16``, ``false`` is ``fp32``."""
    eval_every: Count | None = Field(default=None, gt=0)
    """Steps between evaluations; None: ``EVALUATIONS`` a run, among which the best checkpoint is kept."""
    checkpoint_every: Count | None = Field(default=None, gt=0)
    """Steps between checkpoints; None: at each evaluation."""
    keep_checkpoints: Count = Field(default=2, gt=0)
    log_every: Count = Field(default=25, gt=0)
    seed: Count = 0
    strategy: Literal["ddp", "fsdp"] = "ddp"
    sinks: list[Ref] | None = None
    """Metrics sinks registered by plugins (e.g. ``{type: tensorboard}``); None: every available one."""

    @model_validator(mode="after")
    def _bf16_is_a_precision(self) -> TrainConfig:
        if self.bf16 is not None:
            self.precision = "bf16" if self.bf16 else "fp32"
            self.bf16 = None
        return self


class Pipeline(Strict):
    description: str = ""
    fields: dict[str, Ref] = Field(min_length=1)
    """Shard field -> codec, in stream order."""
    optional: list[str] = Field(default_factory=list)
    """Fields a sample may lack (e.g. a scene or a tone in a mixed-modality set)."""
    head: Ref
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("optional")
    @classmethod
    def _optional_are_fields(cls, optional: list[str], info: Any) -> list[str]:
        fields = info.data.get("fields") or {}
        unknown = [name for name in optional if name not in fields]
        if unknown:
            raise ValueError(f"optional names unknown fields {unknown} (fields: {', '.join(fields)})")
        return optional


class RegistryFile(Strict):
    default: str | None = None
    pipelines: dict[str, Pipeline] = Field(min_length=1)
