"""Issue 2: registry validation in two passes, with file and line in every error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mbp.config import check_registry, load_registry
from mbp.errors import ConfigError

from tests.conftest import ROOT, invoke_mbp, run_mbp

GOOD = """\
pipelines:
  tiny:
    fields:
      txt: {type: text}
    head: {type: lm}
    model:
      stages:
        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}
        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, seq_len: 4}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "reg.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_registry_is_valid_and_top_level_copy_is_the_same(components) -> None:
    check_registry(load_registry(), components)
    assert (ROOT / "registry.yaml").read_text() == (ROOT / "core" / "mbp" / "registry.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "reg.yaml: registry file is empty"),
        ("pipelines: [\n  oops", "reg.yaml:2: invalid YAML"),
        ("- a\n- b\n", "reg.yaml:1: expected a mapping"),
        ("pipelines: {}\n", "reg.yaml:1: pipelines: Dictionary should have at least 1 item"),
        (
            GOOD.replace("dim: 32", "dim: thirty"),
            "reg.yaml:8: pipelines.tiny.model.stages.0.dim: Input should be a valid integer",
        ),
        (  # a boolean is no count: YAML's `true` once read as 1
            GOOD.replace("dim: 32", "dim: true"),
            "reg.yaml:8: pipelines.tiny.model.stages.0.dim: Input should be a valid integer, not a boolean",
        ),
        (
            GOOD.replace("head: {type: lm}", "head: {type: lm}\n    heed: 1"),
            "reg.yaml:6: pipelines.tiny.heed: unknown key",
        ),
        (
            GOOD.replace("{type: text}", "{kind: text}"),
            "reg.yaml:4: pipelines.tiny.fields.txt.type: Field required",
        ),
    ],
)
def test_pass_one_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_registry(write(tmp_path, text))
    assert str(error.value).startswith(
        str(tmp_path / message.split(":")[0]) + message[len(message.split(":")[0]) :]
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: registry file not found"):
        load_registry(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "{type: text}",
            "{type: txet}",
            ":4: pipelines.tiny.fields.txt.type: unknown codec 'txet' (valid: image, pixels, text, wav)",
        ),
        (
            "heads: 2}, dim: 32",
            "hedas: 2}, dim: 32",
            ":8: pipelines.tiny.model.stages.0.backbone.hedas: unknown parameter of backbone 'transformer' "
            "(valid: heads, mlp_ratio, mlp, dropout, attention_dropout, rope_base)",
        ),
        (
            "{type: lm}",
            "{type: vqa, answer_field: 3}",
            ":5: pipelines.tiny.head.answer_field: Input should be a valid string",
        ),
    ],
)
def test_pass_two_checks_plugin_parameters(
    tmp_path: Path, components, old: str, new: str, message: str
) -> None:
    registry = load_registry(write(tmp_path, GOOD.replace(old, new, 1)))
    with pytest.raises(ConfigError) as error:
        check_registry(registry, components)
    assert message in str(error.value)


def test_unknown_pipeline_lists_valid_ones(tmp_path: Path) -> None:
    registry = load_registry(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"unknown pipeline 'huge' \(valid: tiny\)"):
        registry.pipeline("huge")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["validate", "MISSING"], "MISSING: registry file not found"),
        (["run", "huge"], "unknown pipeline 'huge'"),
        (["run", "--set", "train.stpes=3", "--steps", "1"], "--set: train.stpes: unknown key"),
        (["run", "--set", "model.stages.5.dim=3"], "--set model.stages.5.dim: '5' is not an index below 2"),
    ],
)
def test_cli_config_errors_exit_2_in_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = run_mbp(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.steps=true", "train.steps: Input should be a valid integer, not a boolean"),
        ("data.batch_size=false", "data.batch_size: Input should be a valid integer, not a boolean"),
        ("train.seed=true", "train.seed: Input should be a valid integer, not a boolean"),
        ("train.lr=true", "train.lr: Input should be a valid number, not a boolean"),
        ("train.lr=inf", "train.lr: Input should be a finite number"),  # YAML's word, read as a float
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
        ("train.lr=.nan", "train.lr: Input should be a finite number"),
        ("train.weight_decay=.inf", "train.weight_decay: Input should be a finite number"),
        ("train.clip=.inf", "train.clip: Input should be a finite number"),
        ("train.minutes=.inf", "train.minutes: Input should be a finite number"),
    ],
)
def test_set_refuses_booleans_as_numbers_and_infinite_floats(
    setting: str, message: str, tmp_path: Path
) -> None:
    """``train.steps=true`` once trained 1 step and ``train.lr=inf`` trained to NaN, both exit 0."""
    result = invoke_mbp("run", "--registry", write(tmp_path, GOOD), "--set", setting)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"mbp: error: --set: {message}"]
    for number in ("train.lr=1", "train.lr=3e-4"):  # YAML reads an int, then a string
        whole = invoke_mbp("run", "--registry", write(tmp_path, GOOD), "--set", number)
        assert "names no train shards" in whole.stderr  # past validation: the next check refuses


def test_validate_command(tmp_path: Path) -> None:
    ok = run_mbp("validate", write(tmp_path, GOOD))
    assert ok.returncode == 0 and "ok (1 pipelines: tiny)" in ok.stderr
    # the refusal through the same command in-process (test_cli_config_errors_exit_2_in_one_line and
    # test_answer_field_must_come_last run validate's refusals as the mbp process)
    bad = invoke_mbp("validate", write(tmp_path, GOOD.replace("{type: lm}", "{type: lmm}")))
    assert bad.returncode == 2 and "unknown head 'lmm' (valid: classify, lm, vqa)" in bad.stderr


def test_head_must_target_a_pipeline_field(tmp_path: Path) -> None:
    from mbp.plugins import get_platform
    from mbp.resolve import resolve

    path = write(tmp_path, GOOD.replace("{type: lm}", "{type: vqa, answer_field: reply}"))
    message = r"reg\.yaml:5: head 'vqa' targets field 'reply', which is not among"
    with pytest.raises(ConfigError, match=message):
        resolve(path, "tiny", components=get_platform().components)


def test_answer_field_must_come_last(tmp_path: Path) -> None:
    """Issue 14: with the answer first, a classifier answers before it reads the audio and stays at
    chance without a word (a YAML dump with sorted keys did exactly this)."""
    text = GOOD.replace("      txt: {type: text}\n", "      answer: {type: text}\n      txt: {type: text}\n")
    bad = run_mbp(
        "validate", write(tmp_path, text.replace("{type: lm}", "{type: classify, label_field: answer}"))
    )
    assert bad.returncode == 2
    assert (
        "reg.yaml:3: head 'classify' answers field 'answer' from the fields before it, so it must come "
        "last; move 'txt' above 'answer'" in bad.stderr
    )


def test_later_stages_take_patch_and_still_accept_seq_len(components) -> None:
    from mbp.config import ModelConfig
    from mbp.model.build import build_model
    from pydantic import ValidationError

    def config(**second: int) -> ModelConfig:
        first = {"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1, "seq_len": 3}
        inner = {"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1}
        return ModelConfig.model_validate({"stages": [first, {**inner, **second}, {**inner, "patch": 2}]})

    new, old = config(patch=4), config(seq_len=4)  # seq_len: the deprecated name, read as patch
    assert new == old and new.stages[1].patch == 4 and new.stages[1].seq_len is None
    assert new.patch_len == 8 and build_model(new, components).max_len == 3 * 8
    assert ModelConfig.model_validate(new.model_dump()) == new  # checkpoints store the new name
    with pytest.raises(ValidationError, match="stage 2: patch 4 and seq_len 5 disagree"):
        config(patch=4, seq_len=5)
    with pytest.raises(ValidationError, match="stage 2 needs patch"):
        config()


@pytest.mark.parametrize(
    ("head", "model_line", "expected"),
    [
        ("{type: vqa}", "", [0.1, 0.3, None]),  # the answer heads' dropout; an explicit one stays
        ("{type: classify, label_field: answer}", "      dropout: 0.2\n", [0.2, 0.3, None]),  # model.dropout
        ("{type: lm}", "", [0.0, 0.3, None]),
    ],
)
def test_dropout_comes_from_the_head_unless_the_pipeline_sets_it(
    tmp_path: Path, head: str, model_line: str, expected: list[float | None]
) -> None:
    """Issue 14: dropout is the default where labelled sets are small (a user who never heard of it gets
    it), written into each backbone that takes a ``dropout`` (Mamba takes none), so the model that is
    built, the checkpoint and the error messages all show the dropout used."""
    from mbp.model.build import build_model
    from mbp.plugins import get_platform
    from mbp.resolve import resolve

    text = (
        "pipelines:\n  tiny:\n    fields:\n      txt: {type: text}\n      answer: {type: text}\n"
        f"    head: {head}\n    model:\n{model_line}      stages:\n"
        "        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}\n"
        "        - {backbone: {type: transformer, heads: 2, dropout: 0.3}, dim: 16, layers: 1, patch: 4}\n"
        "        - {backbone: {type: mamba, state: 8, headdim: 8}, dim: 16, layers: 1, patch: 2}\n"
    )
    components = get_platform().components
    resolved = resolve(write(tmp_path, text), "tiny", components=components)
    stages = resolved.pipeline.model.stages
    assert [stage.backbone.as_dict().get("dropout") for stage in stages] == expected
    assert resolved.pipeline.model.dropout == expected[0]
    model = build_model(resolved.pipeline.model, components)
    rates = [m.p for m in model.backbones[0].modules() if isinstance(m, torch.nn.Dropout)]
    assert rates and set(rates) == {expected[0]}


def test_set_model_dropout_reaches_every_backbone(tmp_path: Path) -> None:
    """``--set model.dropout=0`` once reported 0 and trained at the head's 0.1: the override was applied
    after the head's rate had been written into each backbone."""
    from mbp.overrides import apply_overrides
    from mbp.plugins import get_platform
    from mbp.resolve import resolve

    text = (
        "pipelines:\n  tiny:\n    fields:\n      txt: {type: text}\n      answer: {type: text}\n"
        "    head: {type: vqa}\n    model:\n      stages:\n"
        "        - {backbone: {type: transformer, heads: 2}, dim: 32, layers: 1}\n"
        "        - {backbone: {type: transformer, heads: 2}, dim: 16, layers: 1, patch: 4}\n"
    )
    components = get_platform().components
    base = resolve(write(tmp_path, text), "tiny", components=components)
    assert [stage.backbone.as_dict()["dropout"] for stage in base.pipeline.model.stages] == [0.1, 0.1]
    for setting, expected in [("model.dropout=0", 0.0), ("model.dropout=0.25", 0.25)]:
        pipeline = apply_overrides(base, [setting])
        resolved = resolve(write(tmp_path, text), "tiny", pipeline, components=components)
        assert [stage.backbone.as_dict()["dropout"] for stage in resolved.pipeline.model.stages] == [
            expected
        ] * 2
    # a data setting the head fills in is overridden the same way
    pipeline = apply_overrides(base, ["data.batch_size=3"])
    assert (
        resolve(write(tmp_path, text), "tiny", pipeline, components=components).pipeline.data.batch_size == 3
    )


def test_init_from_ignores_dropout_but_not_shapes() -> None:
    """Dropout is written into the resolved pipeline (above), so a checkpoint trained under the `lm` head
    (dropout 0) must still initialise a `vqa` pipeline (0.1): rates change training, not weights."""
    from mbp.config import ModelConfig
    from mbp.train.init import first_difference

    def config(dropout: float | None, dim: int = 32) -> dict:
        backbone = {"type": "transformer", "heads": 2, **({} if dropout is None else {"dropout": dropout})}
        return ModelConfig.model_validate(
            {"stages": [{"backbone": backbone, "dim": dim, "layers": 1}], "dropout": dropout}
        ).model_dump()

    assert first_difference(config(None), config(0.1)) is None
    assert first_difference(config(0.0), config(0.1)) is None
    assert first_difference(config(0.0), config(0.1, dim=64)) == (
        "model.stages.0.dim: checkpoint has 32, the pipeline 64"
    )
