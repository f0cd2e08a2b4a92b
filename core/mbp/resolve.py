"""Resolving a pipeline into live objects: validated config, codecs, head, model.

This is where the core reads what each plugin declares (a codec's ``CodecTraits``, a head's
``HeadDefaults``, through :mod:`mbp.traits`); the ``Resolved`` pipeline carries both, and nothing after it
asks a plugin object what it is."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal

from mbp.components import ComponentTable
from mbp.config import Pipeline, Ref, Registry, check_pipeline, load_registry, settled_seq_len
from mbp.data.batches import Position, encoded_stream
from mbp.data.encode import SampleEncoder
from mbp.data.skips import SkipLog
from mbp.errors import ConfigError
from mbp.heads import HeadDefaults, TaskHead
from mbp.sample import EncodedSample
from mbp.traits import FieldCodec, field_codec, head_defaults


@dataclass
class Resolved:
    registry: Registry
    name: str
    pipeline: Pipeline
    head: TaskHead
    encoder: SampleEncoder
    components: ComponentTable
    """What the pipeline's names were resolved against; the model is built from it too."""
    defaults: HeadDefaults
    """What the head declared (``mbp.traits.head_defaults``), read once."""

    @property
    def split(self) -> bool:
        """Whether rows may cut samples (``HeadDefaults.split_samples``)."""
        return self.defaults.split_samples

    def stream(
        self, *, training: bool, repeat: bool = True, augment: bool = False, seq_len: int | None = None
    ) -> Stream:
        """The encoded stream's settings for this pipeline: a training stream is shuffled and seeded as
        ``train.seed`` and ``data.shuffle_buffer`` say; a held-out one is read in order. ``augment``:
        samples varied and weighted as training's are. ``seq_len``: rows of that many tokens instead of
        ``data.seq_len``'s."""
        data, train = self.pipeline.data, self.pipeline.train
        return Stream(
            self.encoder,
            settled_seq_len(data) if seq_len is None else seq_len,
            seed=train.seed if training else 0,
            shuffle_buffer=data.shuffle_buffer if training else 0,
            split=self.split,
            augment=augment,
            repeat=repeat,
        )

    def with_settings(self, section: Literal["data", "train"], **values: object) -> Resolved:
        """This pipeline with ``values`` set in its ``data`` or ``train`` section, as a run settles what
        the pipeline leaves to it (rows, steps, precision); head and encoder stay as they are."""
        part = getattr(self.pipeline, section).model_copy(update=values)
        return dataclasses.replace(self, pipeline=self.pipeline.model_copy(update={section: part}))

    def with_encoding(self, pipeline: Pipeline) -> Resolved:
        """``pipeline`` in place of this one, with an encoder built for it: for the settings the encoder
        reads (the byte-level stage's patch, ``data.augment``). Its codecs, and what they declared, stay."""
        encoder = SampleEncoder(pipeline, self.encoder.fields, self.head, self.defaults)
        return dataclasses.replace(self, pipeline=pipeline, encoder=encoder)


@dataclass(frozen=True)
class Stream:
    """The encoded stream's parameters, built in one place (``Resolved.stream``)."""

    encoder: SampleEncoder
    seq_len: int
    seed: int
    shuffle_buffer: int
    split: bool
    augment: bool
    repeat: bool

    def samples(
        self,
        shards: list[str],
        log: SkipLog,
        *,
        start: Position | None = None,
        rank: int = 0,
        world: int = 1,
        picked: Callable[[int], bool] | None = None,
        workers: int = 0,
    ) -> Generator[tuple[EncodedSample, Position], None, None]:
        """The stream over ``shards`` (``mbp.data.batches.encoded_stream``), from ``start``, for ``rank``
        of ``world`` processes, of the samples ``picked`` picks, encoded by ``workers`` processes."""
        return encoded_stream(
            shards,
            self.encoder,
            self.seq_len,
            log,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            start=start,
            repeat=self.repeat,
            rank=rank,
            world=world,
            augment=self.augment,
            split=self.split,
            picked=picked,
            workers=workers,
        )


def resolve(
    registry_path: str | None,
    name: str | None,
    pipeline: Pipeline | None = None,
    *,
    components: ComponentTable,
) -> Resolved:
    """Load and fully validate a pipeline (both passes) and build its head and encoder."""
    registry = load_registry(registry_path)
    name = name or registry.default_pipeline
    check_pipeline(registry, name, components)
    pipeline = pipeline or registry.pipeline(name)
    return resolved_pipeline(registry, name, pipeline, components)


def resolved_pipeline(
    registry: Registry, name: str, pipeline: Pipeline, components: ComponentTable
) -> Resolved:
    """``pipeline`` (checked) with its head and codecs built and what they declare read: the defaults its
    head sets are written into it, so the run, its checkpoints and its summary all show them."""
    head, defaults = resolve_head(registry, name, pipeline, components)
    pipeline = with_batch_size(with_dropout(pipeline, defaults, components), defaults)
    fields = pipeline_codecs(pipeline, components, defaults)
    encoder = SampleEncoder(pipeline, fields, head, defaults)
    return Resolved(registry, name, pipeline, head, encoder, components, defaults)


def pipeline_codecs(
    pipeline: Pipeline, components: ComponentTable, defaults: HeadDefaults
) -> dict[str, FieldCodec]:
    """Each field's codec with its traits; a field that a head answers from (not the answer itself) gets
    the codec's reading view. Training, evaluation and ``mbp generate`` all encode through these."""
    answered = defaults.answers
    fields = {}
    for name, ref in pipeline.fields.items():
        codec = components.build("codecs", ref.as_dict())
        plugin = components.get("codecs", ref.type).plugin
        fields[name] = field_codec(codec, plugin, read_only=answered is not None and name != answered)
    return fields


def build_problems(registry: Registry, name: str, components: ComponentTable) -> list[str]:
    """What ``mbp run`` would reject once it builds the pipeline (a head aimed at a missing field,
    heads that do not divide a stage's width, a ``data.seq_len`` that is not a multiple of the patch):
    the model is built on the meta device, so its shapes are checked without memory or training."""
    import torch

    from mbp.model.build import build_backbone, build_model

    pipeline = registry.pipeline(name)
    problems = []
    try:
        resolve_head(registry, name, pipeline, components)
    except ConfigError as error:
        problems.append(str(error))
    with torch.device("meta"):
        for index, stage in enumerate(pipeline.model.stages):
            path = ("pipelines", name, "model", "stages", index)
            try:
                build_backbone(components, stage.backbone.as_dict(), stage.dim, stage.layers)
            except ConfigError as error:
                problems.append(f"{registry.where(path)}: {'.'.join(map(str, path))}: {error}")
        if not problems:
            try:
                build_model(pipeline.model, components)
            except (ConfigError, ValueError, TypeError) as error:
                where = registry.where(("pipelines", name, "model"))
                problems.append(f"{where}: pipelines.{name}.model: {error}")
    patch = misfit_patch(pipeline)
    if patch is not None:
        problems.append(
            f"{registry.where(('pipelines', name, 'data', 'seq_len'))}: pipelines.{name}.data.seq_len: "
            f"{pipeline.data.seq_len} is not a multiple of the patch length {patch}"
        )
    return problems


def misfit_patch(pipeline: Pipeline) -> int | None:
    """The patch length, where ``data.seq_len`` is set and is no multiple of it (a row would end inside a
    patch, which the model cannot take); else None."""
    patch = pipeline.model.patch_len
    seq_len = pipeline.data.seq_len
    return patch if seq_len is not None and seq_len % patch else None


def resolve_head(
    registry: Registry, name: str, pipeline: Pipeline, components: ComponentTable
) -> tuple[TaskHead, HeadDefaults]:
    """The pipeline's head and its defaults, checked to target one of its fields."""
    head: TaskHead = components.build("heads", pipeline.head.as_dict())
    defaults = head_defaults(head)
    target = defaults.answers  # the segment a vqa/classify head answers
    if target is not None and target not in pipeline.fields:
        raise ConfigError(
            f"{registry.where(('pipelines', name, 'head'))}: head '{pipeline.head.type}' targets field "
            f"'{target}', which is not among the pipeline's fields ({', '.join(pipeline.fields)})"
        )
    fields = list(pipeline.fields)
    later = fields[fields.index(target) + 1 :] if target else []
    if later:  # the model reads fields in order: what follows the answer is never seen when answering
        raise ConfigError(
            f"{registry.where(('pipelines', name, 'fields'))}: head '{pipeline.head.type}' answers field "
            f"'{target}' from the fields before it, so it must come last; move {', '.join(map(repr, later))} "
            f"above '{target}'"
        )
    return head, defaults


def with_batch_size(pipeline: Pipeline, defaults: HeadDefaults) -> Pipeline:
    """The pipeline with ``data.batch_size`` filled in from the head's defaults if unset, so
    the run, its checkpoints and its summary all show the rows a step it trained with."""
    if pipeline.data.batch_size is not None:
        return pipeline
    rows = defaults.batch_size
    return pipeline.model_copy(update={"data": pipeline.data.model_copy(update={"batch_size": rows})})


def with_dropout(pipeline: Pipeline, defaults: HeadDefaults, components: ComponentTable) -> Pipeline:
    """The pipeline with ``model.dropout`` (or else the head's default) written into every stage whose
    backbone takes a ``dropout`` parameter and leaves it unset, so the run, its checkpoints and its
    summary all show the dropout that was trained with."""
    model = pipeline.model
    dropout = model.dropout
    if dropout is None:
        dropout = defaults.dropout
    stages, taken = [], False
    for stage in model.stages:
        ref = stage.backbone.as_dict()
        if "dropout" in components.get("backbones", ref["type"]).params.model_fields:
            taken = True
            if "dropout" not in ref:
                stage = stage.model_copy(update={"backbone": Ref.model_validate({**ref, "dropout": dropout})})
        stages.append(stage)
    if not taken:  # e.g. mblm's block, whose dropouts have other names: nothing was applied
        return pipeline
    filled = model.model_copy(update={"stages": stages, "dropout": dropout})
    return pipeline.model_copy(update={"model": filled})
