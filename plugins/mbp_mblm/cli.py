"""``mbp import mblm CONFIG.yaml WEIGHTS.pth OUT_DIR``: an mblm checkpoint becomes an ordinary mbp
checkpoint (safetensors + JSON, written by mbp's own checkpoint code) plus a ``registry.yaml`` with a
pipeline entry, so ``mbp generate``, ``mbp eval`` and ``mbp run --init-from`` take it as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml
from mbp.api import (
    CheckpointError,
    ConfigError,
    ModelConfig,
    MultiscaleDecoder,
    Pipeline,
    build_model,
    load_components,
    refuse_unsafe_output,
    save_model,
    write_file_atomically,
)

from mbp_mblm.convert import data_seq_len, load_state, map_state, model_config, read_params

REGISTRY = "registry.yaml"
WRITTEN = ("config.json", "model.safetensors", REGISTRY)
"""The files an import writes: all that ``--force`` replaces in OUT_DIR."""


def convert(config: Path, weights: Path) -> tuple[MultiscaleDecoder, ModelConfig, dict[str, Any]]:
    """The mbp model (weights loaded) and its config for an mblm checkpoint, and mblm's ``params``."""
    params = read_params(config)
    cfg = ModelConfig.model_validate(model_config(params, str(config)))
    model = build_model(cfg, load_components())
    mapped = map_state(load_state(weights), params, cfg.model_dump(), weights)
    expected = model.state_dict()
    for name, tensor in mapped.items():
        if name not in expected:
            raise CheckpointError(
                f"{weights}: mapped tensor '{name}' has no place in the model built from {config}"
            )
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{weights}: '{name}' has shape {tuple(tensor.shape)}, but {config} implies "
                f"{tuple(expected[name].shape)}"
            )
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise CheckpointError(f"{weights}: no mblm tensor for '{missing[0]}' ({len(missing)} missing)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=True)
    return model, cfg, params


def pipeline_for(cfg: ModelConfig, params: dict[str, Any], source: Path) -> Pipeline:
    """A plain-text language-modelling pipeline around the imported model."""
    return Pipeline.model_validate(
        {
            "description": f"imported from mblm ({source.name})",
            "fields": {"text": {"type": "text"}},
            "head": {"type": "lm"},
            "model": cfg.model_dump(),
            "data": {"seq_len": data_seq_len(params, cfg.model_dump()), "batch_size": 8},
        }
    )


@click.command("mblm")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("weights", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="mblm", show_default=True, help="Pipeline name in OUT_DIR/registry.yaml.")
@click.option("--force", is_flag=True, help="Replace the checkpoint in OUT_DIR (its other files stay).")
def import_mblm(config: Path, weights: Path, out_dir: Path, name: str, force: bool) -> None:
    """Import an mblm 0.4.2 model: CONFIG is the YAML its trainer wrote (its `params` section is read),
    WEIGHTS the .pth state dict (loaded with weights_only=True), OUT_DIR the mbp checkpoint to write."""
    refuse_unsafe_output(out_dir, "OUT_DIR", (config, weights))
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in WRITTEN) if out_dir.is_dir() else []
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"{out_dir}: exists and is not empty (pass --force to replace it)")
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"--name {name!r}: a pipeline name needs characters and no spaces")
    model, cfg, params = convert(config, weights)  # read before anything in OUT_DIR is replaced
    pipeline = pipeline_for(cfg, params, config)
    extra = {
        "pipeline_name": name,
        "pipeline": pipeline.model_dump(),
        "imported_from": {"tool": "mblm", "config": str(config), "weights": str(weights)},
    }
    save_model(out_dir, model, cfg, extra)
    registry = {"default": name, "pipelines": {name: pipeline.model_dump(mode="json", exclude_defaults=True)}}
    write_file_atomically(out_dir / REGISTRY, yaml.safe_dump(registry, sort_keys=False).encode())
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        click.echo(f"mbp: {out_dir}: kept {len(foreign)} item(s) mbp does not write: {shown}", err=True)
    count = sum(p.numel() for p in model.parameters())
    kinds = ", ".join(s.backbone.type for s in cfg.stages)
    click.echo(
        json.dumps(
            {
                "checkpoint": str(out_dir),
                "registry": str(out_dir / REGISTRY),
                "pipeline": name,
                "stages": kinds,
                "parameters": count,
            },
            indent=2,
        )
    )
    click.echo(
        f"imported {len(cfg.stages)} stage(s) ({kinds}), {count} parameters; try: "
        f"mbp generate --checkpoint {out_dir} --prompt 'Hello'",
        err=True,
    )


__all__ = ["convert", "import_mblm", "pipeline_for"]
