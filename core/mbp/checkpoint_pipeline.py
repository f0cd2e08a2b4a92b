"""Which checkpoint a path means, and the pipeline it serves: the one its run recorded, or one named
in a registry that must fit it (same fields and codecs, same model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mbp.components import ComponentTable
from mbp.config import ModelConfig, Pipeline, Registry, RegistryFile, check_pipeline
from mbp.errors import CheckpointError, ConfigError
from mbp.model.checkpoint_files import CONFIG, checkpoint_document, load_model
from mbp.model.decoder import MultiscaleDecoder
from mbp.resolve import Resolved, resolve, resolved_pipeline


def checkpoint_folder(path: Path) -> Path:
    """``path`` if it is a checkpoint (or no run folder), else the run folder's best checkpoint, else its
    newest: a run keeps ``checkpoints/best`` and ``checkpoints/step-N``."""
    from mbp.train.checkpoint import list_checkpoints
    from mbp.train.watch import BEST

    if (path / CONFIG).exists() or not (path / "checkpoints").is_dir():
        return path  # not a checkpoint either: loading it says so, naming the path
    best = path / "checkpoints" / BEST
    if (best / CONFIG).is_file():
        return best
    steps = list_checkpoints(path)
    if not steps:
        raise CheckpointError(f"{path}: a run folder without a checkpoint (none in {path / 'checkpoints'})")
    return steps[-1]


def recorded_pipeline(
    directory: Path, document: dict[str, Any], components: ComponentTable
) -> Resolved | None:
    """The pipeline the checkpoint's run recorded, resolved as a registry's would be; None if the
    weights were saved without one. Its ``data.max_eval_samples`` is dropped: a run may have planned
    it to keep its evaluations short, and a checkpoint's score is over every sample it is given."""
    if "pipeline" not in document:
        return None
    try:
        pipeline = Pipeline.model_validate(document["pipeline"])
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in ("pipeline", *first["loc"]))
        raise CheckpointError(f"{directory}/{CONFIG}: key {key}: {first['msg']}") from None
    data = pipeline.data.model_copy(update={"max_eval_samples": None})
    pipeline = pipeline.model_copy(update={"data": data})
    name = str(document.get("pipeline_name") or "checkpoint")
    raw = {"pipelines": {name: document["pipeline"]}}
    registry = Registry(f"{directory}/{CONFIG}", raw, RegistryFile(pipelines={name: pipeline}), {})
    check_pipeline(registry, name, components)
    return resolved_pipeline(registry, name, pipeline, components)


def given_pipeline(
    directory: Path, name: str | None, registry: str | Path | None, components: ComponentTable
) -> tuple[MultiscaleDecoder, dict[str, Any], Resolved]:
    """The model and ``name`` from ``registry`` (default: the pipeline the checkpoint names), checked
    to fit it; a byte-level patch the pipeline leaves to the run is the one the checkpoint trained."""
    from mbp.planning.boundary_plan import with_trained_boundaries
    from mbp.planning.patch_plan import with_trained_patch
    from mbp.train.rundir import check_belongs

    if name is None:
        name = str(checkpoint_document(directory).get("pipeline_name") or "") or None
    resolved = resolve(str(registry) if registry is not None else None, name, components=components)
    model, document = load_model(directory, components)
    check_belongs(directory, resolved.name, resolved.pipeline, document)
    trained = ModelConfig.model_validate(document["model"])
    resolved = with_trained_boundaries(with_trained_patch(resolved, trained), trained)
    check_model(directory, resolved, trained, document)
    return model, document, resolved


def check_model(directory: Path, resolved: Resolved, trained: ModelConfig, document: dict[str, Any]) -> None:
    """The pipeline's model is the checkpoint's in every weight-relevant setting (backbones and their
    parameters, widths, depths, patches; rates such as dropout may differ): the weights are the
    checkpoint's either way, so a pipeline that differs would describe a model it does not run."""
    from mbp.train.init import first_difference

    difference = first_difference(trained.model_dump(), resolved.pipeline.model.model_dump())
    if difference:
        theirs_name = str(document.get("pipeline_name", "?"))
        raise ConfigError(
            f"{directory}: checkpoint of pipeline '{theirs_name}' is not a model of pipeline "
            f"'{resolved.name}': {difference}"
        )
