"""Issue 15: ``mbp import mblm``. Imported models reproduce mblm 0.4.2's logits and greedy generation
(stored by benchmarks/mblm_fixtures.py; re-made live where mblm is at hand), bad inputs are one-line
errors, and the written checkpoint works with generate, eval and ``run --init-from``."""

from __future__ import annotations

import json
import pathlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from mbp.cli import cli
from mbp.config import ModelConfig
from mbp.generate import generate
from mbp.model.checkpoint_files import load_model
from mbp.resolve import resolve
from mbp_mblm.cli import convert
from safetensors.torch import load_file

from tests.conftest import ROOT, invoke_mbp, run_mbp

FIXTURES = ROOT / "tests" / "fixtures" / "mblm"
NAMES = ["one-stage", "two-stage", "three-stage"]
REF_PYTHON = ROOT / "benchmarks" / ".venv-ref" / "bin" / "python"


def check_equivalence(folder: Path) -> tuple[float, list[int]]:
    """Max |mbp - mblm| over the prompt's logits and mbp's cached greedy tokens."""
    model, _, _ = convert(folder / "config.yaml", folder / "weights.pth")
    model.eval()
    reference = json.loads((folder / "reference.json").read_text())
    expected = load_file(str(folder / "reference.safetensors"))["logits"]  # (L, 257)
    prompt = torch.tensor(reference["prompt"])
    with torch.no_grad():
        ours = model(prompt[None])[0]  # (L, 262): position t predicts token t
    # mblm's position t predicts token t+1 (mbp's t+1); mbp ids 0..256 are mblm's (256 = pad)
    difference = (ours[1:, :257] - expected[:-1]).abs().max().item()
    tokens = generate(model, [prompt], max_new=len(reference["greedy"]), stop_tokens=())[0]
    assert tokens == reference["greedy"], bytes(t for t in tokens if t < 256)
    return difference, tokens


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_greedy_generation_equal_mblm(name: str) -> None:
    difference, tokens = check_equivalence(FIXTURES / name)
    assert difference <= 1e-5
    assert len(set(tokens)) > 5, "a degenerate model would make the generation check vacuous"


def test_against_live_mblm(tmp_path: Path) -> None:
    """Re-makes the references with the mblm at hand (in-process or the benchmark venv) and compares."""
    import importlib.util

    python = sys.executable if importlib.util.find_spec("mblm") else str(REF_PYTHON)
    if not Path(python).exists():
        pytest.skip("mblm is not installed here (benchmarks/bench_model.py makes benchmarks/.venv-ref)")
    done = subprocess.run(
        [
            python,
            "-W",
            "ignore",
            str(ROOT / "benchmarks" / "mblm_fixtures.py"),
            str(tmp_path),
            "--steps",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in NAMES:
        difference, _ = check_equivalence(tmp_path / name)
        assert difference <= 1e-5, name


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output  # click mixes stderr into output


def edited(tmp_path: Path, change: dict, name: str = "two-stage") -> Path:
    document = yaml.safe_load((FIXTURES / name / "config.yaml").read_text())
    for dotted, value in change.items():
        target = document["params"]
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is None and isinstance(target, dict):
            target.pop(last, None)
        else:
            target[int(last) if isinstance(target, list) else last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


CONFIG_ERRORS = {
    "unknown-key": ({"vocab": 3}, "params.vocab: unknown mblm config key"),
    "unknown-block-key": ({"block.0.attn_heads": 2}, "params.block[0].attn_heads: unknown key"),
    "rope-on-stage-2": ({"block.1.pos_emb_type": "rope"}, "'rope' on stage 2 is not importable"),
    "encoder": ({"block.0.block_type": "transformerEncoder"}, "is not causal"),
    "mamba-1": (
        {"block.0": {"block_type": "mamba1", "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8}},
        "Mamba-1 (mambapy) stage",
    ),
    "mamba-positions": (
        {
            "block.0": {
                "block_type": "mamba2",
                "d_state": 8,
                "d_conv": 4,
                "expand": 2,
                "headdim": 8,
                "pos_emb_type": "fixed",
            }
        },
        "params.block[0].pos_emb_type: mbp's mamba backbone takes no positional embedding",
    ),
    "missing-heads": ({"block.1.attn_num_heads": None}, "params.block[1].attn_num_heads: required key"),
    "vocabulary": ({"num_tokens": 300}, "params.num_tokens: 300 tokens"),
    "lengths": ({"seq_lens": [16]}, "params.seq_lens: hidden_dims, num_layers and seq_lens differ"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=list(CONFIG_ERRORS))
def test_config_errors_name_the_key(tmp_path: Path, case: str) -> None:
    change, message = CONFIG_ERRORS[case]
    config = edited(tmp_path, change)
    code, output = invoke(
        "import", "mblm", str(config), str(FIXTURES / "two-stage" / "weights.pth"), str(tmp_path / "o")
    )
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


class Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def test_weights_that_need_code_are_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    weights = tmp_path / "evil.pth"
    weights.write_bytes(pickle.dumps({"MODEL": Payload(marker)}, protocol=2))
    config = FIXTURES / "two-stage" / "config.yaml"
    code, output = invoke("import", "mblm", str(config), str(weights), str(tmp_path / "o"))
    assert code == 1 and "not a loadable mblm state dict (weights_only load" in output, output
    assert not marker.exists()


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    weights = FIXTURES / "two-stage" / "weights.pth"
    wider = edited(tmp_path, {"hidden_dims": [48, 40]})
    code, output = invoke("import", "mblm", str(wider), str(weights), str(tmp_path / "o"))
    assert code == 1 and "has shape" in output and "implies" in output, output
    state = torch.load(weights, weights_only=True)
    del state["MODEL"]["to_logits.bias"]
    torch.save(state, tmp_path / "partial.pth")
    code, output = invoke(
        "import",
        "mblm",
        str(FIXTURES / "two-stage" / "config.yaml"),
        str(tmp_path / "partial.pth"),
        str(tmp_path / "o"),
    )
    assert code == 1 and "tensor 'to_logits.bias' missing" in output, output


def test_out_dir_is_not_overwritten_silently(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("mine")
    folder = FIXTURES / "one-stage"
    code, output = invoke(
        "import", "mblm", str(folder / "config.yaml"), str(folder / "weights.pth"), str(out)
    )
    assert code == 2 and "pass --force" in output
    assert (out / "keep").read_text() == "mine"


def test_import_writes_a_checkpoint_and_pipeline_entry(tmp_path: Path) -> None:
    folder = FIXTURES / "three-stage"
    out = tmp_path / "imported"
    code, output = invoke(
        "import", "mblm", str(folder / "config.yaml"), str(folder / "weights.pth"), str(out)
    )
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "registry.yaml"]
    from mbp.plugins import get_platform

    model, document = load_model(out, get_platform().components)
    assert document["pipeline_name"] == "mblm"
    resolved = resolve(str(out / "registry.yaml"), None, components=get_platform().components)  # both passes
    assert resolved.name == "mblm"
    assert resolved.pipeline.model == ModelConfig.model_validate(document["model"])
    assert [s.backbone.type for s in resolved.pipeline.model.stages] == ["mblm-transformer"] * 3
    converted, _, _ = convert(folder / "config.yaml", folder / "weights.pth")
    for (name, a), b in zip(model.state_dict().items(), converted.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def mamba_ssm_stage(dim: int, layers: int, state: int, headdim: int, expand: int = 2, conv: int = 4) -> dict:
    """Random tensors with the names and shapes mamba-ssm gives mblm's Mamba2Mixer (create_block with
    rms_norm, no MLP; Mamba2 with ngroups 1, no biases but conv1d's; RMSNorm norm_f), written out from
    mamba_ssm/modules/mamba2.py rather than taken from mbp, so a layout drift would show."""
    inner = expand * dim
    heads = inner // headdim
    shapes = {"norm_f.weight": (dim,)}
    for i in range(layers):
        shapes |= {
            f"layers.{i}.norm.weight": (dim,),
            f"layers.{i}.mixer.in_proj.weight": (2 * inner + 2 * state + heads, dim),  # [z, x, B, C, dt]
            f"layers.{i}.mixer.conv1d.weight": (inner + 2 * state, 1, conv),
            f"layers.{i}.mixer.conv1d.bias": (inner + 2 * state,),
            f"layers.{i}.mixer.dt_bias": (heads,),
            f"layers.{i}.mixer.A_log": (heads,),
            f"layers.{i}.mixer.D": (heads,),
            f"layers.{i}.mixer.norm.weight": (inner,),
            f"layers.{i}.mixer.out_proj.weight": (dim, inner),
        }
    generator = torch.Generator().manual_seed(0)
    return {f"stage_models.0.{k}": torch.randn(s, generator=generator) * 0.2 for k, s in shapes.items()}


def mamba_checkpoint(tmp_path: Path, block_type: str, stage: dict) -> tuple[Path, Path]:
    block = {"block_type": block_type, "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8, "dropout": 0.0}
    config = edited(tmp_path, {"block.0": block})
    state = torch.load(FIXTURES / "two-stage" / "weights.pth", weights_only=True)["MODEL"]
    state = {k: v for k, v in state.items() if not k.startswith("stage_models.0.")} | stage
    torch.save({"MODEL": state, "LOSS": 0.0}, tmp_path / "mamba.pth")
    return config, tmp_path / "mamba.pth"


def test_mamba2_stages_map_to_the_mamba_backbone(tmp_path: Path) -> None:
    stage = mamba_ssm_stage(48, 2, 8, 8)
    config, weights = mamba_checkpoint(tmp_path, "mamba2", stage)
    model, cfg, _ = convert(config, weights)
    assert cfg.stages[0].backbone.as_dict() == {
        "type": "mamba",
        "state": 8,
        "conv": 4,
        "expand": 2,
        "headdim": 8,
    }
    ours = model.state_dict()
    for name, tensor in stage.items():
        target = name.replace("stage_models.0.", "backbones.0.").replace("norm_f.", "norm.")
        assert torch.equal(ours[target], tensor), name
    # mamba-ssm's Block runs residual = h + residual; h = mixer(norm(residual)), and norm_f(h + residual)
    # at the end: the same sums as mbp's x = x + mixer(norm(x)); norm(x)
    backbone = model.backbones[0].double().eval()
    x = torch.randn(2, 9, 48, dtype=torch.float64)
    hidden, residual = x, None
    for layer in backbone.layers:
        residual = hidden if residual is None else hidden + residual
        hidden = layer.mixer(layer.norm(residual))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.norm(hidden + residual), rtol=0, atol=1e-12)


def test_mamba1_cpu_fallback_weights_are_refused(tmp_path: Path) -> None:
    stage = mamba_ssm_stage(48, 1, 8, 8)
    stage["stage_models.0.layers.0.mixer.x_proj.weight"] = torch.zeros(2, 2)
    stage["stage_models.0.layers.0.mixer.A_log"] = torch.zeros(96, 8)  # Mamba-1's (E, N) matrix
    config, weights = mamba_checkpoint(tmp_path, "mamba2", stage)
    code, output = invoke("import", "mblm", str(config), str(weights), str(tmp_path / "o"))
    assert code == 1 and "Mamba-1 (mambapy) stage" in output and "x_proj" in output, output


def text_shard(path: Path, count: int = 12) -> str:
    from tests.shardkit import write_tar

    text = (ROOT / "README.md").read_bytes()
    samples = [
        {"__key__": f"t{i:03d}".encode(), "text.txt": text[i * 90 : i * 90 + 90]} for i in range(count)
    ]
    write_tar(path, samples)
    return str(path)


def test_imported_checkpoint_generates_evaluates_and_fine_tunes(tmp_path: Path) -> None:
    folder, out = FIXTURES / "two-stage", tmp_path / "imported"
    # in-process: what import, generate, eval and run compute; the last refusal runs as the mbp
    # process (exit code, message, no traceback)
    done = invoke_mbp("import", "mblm", str(folder / "config.yaml"), str(folder / "weights.pth"), str(out))
    assert done.returncode == 0, done.stderr
    generated = invoke_mbp(
        "generate", "--checkpoint", str(out), "--prompt", "the pipeline", "--max-bytes", "24"
    )
    assert generated.returncode == 0 and generated.stdout.startswith("the pipeline"), generated.stderr
    assert "generated 24 tokens" in generated.stderr  # bytes all the way: no marker ended it early
    shard = text_shard(tmp_path / "text-000000.tar")
    registry = str(out / "registry.yaml")
    evaluated = invoke_mbp("eval", "mblm", shard, "--registry", registry, "--checkpoint", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    imported_bpb = json.loads(evaluated.stdout)["metrics"]["bpb"]
    # one step at a negligible learning rate: the run's evaluation is the imported model's
    tune = [
        "--registry",
        registry,
        "--eval-shards",
        shard,
        "--steps",
        "1",
        "--set",
        "train.lr=1e-12",
        "--set",
        "train.precision=fp32",  # as `mbp eval` scores: the comparison is of weights, not precisions
        "--json",
    ]
    started = invoke_mbp(
        "run", "mblm", shard, "--out", str(tmp_path / "tuned"), "--init-from", str(out), *tune
    )
    assert started.returncode == 0, started.stderr
    tuned_bpb = json.loads(started.stdout)["metrics"]["eval_bpb"]
    assert abs(tuned_bpb - imported_bpb) < 1e-4
    fresh = invoke_mbp("run", "mblm", shard, "--out", str(tmp_path / "fresh"), *tune)
    assert json.loads(fresh.stdout)["metrics"]["eval_bpb"] > imported_bpb + 1.0, "random weights do worse"
    both = invoke_mbp(
        "run", "mblm", shard, "--out", str(tmp_path / "x"), "--init-from", str(out), "--resume", *tune
    )
    assert both.returncode == 2 and "not both" in both.stderr
    other = run_mbp("run", "--out", str(tmp_path / "y"), "--init-from", str(out), "--steps", "1")
    assert (
        other.returncode == 2
        and "the checkpoint's model differs from the pipeline's: model.stages" in other.stderr
    )
    assert "Traceback" not in other.stderr
