"""The user's Python API (``mbp.load``, ``mbp.run``): the same numbers as the commands that call it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mbp
import numpy as np
import pytest
from mbp.errors import CheckpointError, ConfigError, MbpError
from mbp.prompting import FieldValue
from mbp.protocol import END

from tests.conftest import invoke_mbp
from tests.shardkit import qa_registry, tiny_registry, write_tar

THINGS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black", "rose": "red"}
HEAD = "type: classify, label_field: answer, context_weight: 1"
"""Trained on the questions too: 80 steps teach the six answers (held-out accuracy 1.0 on the 2-core EPYC)."""
SETTINGS = {
    "train.steps": 80,
    "train.eval_every": 40,
    "train.checkpoint_every": 40,
    "train.log_every": 10,
    "train.lr": 0.01,
    "train.precision": "fp32",
    "data.seq_len": 32,
}


def question(thing: str) -> str:
    return f"{thing}?"


def sample(key: str, thing: str, answer: str) -> dict[str, bytes]:
    return {"__key__": key.encode(), "question.txt": question(thing).encode(), "answer.txt": answer.encode()}


@dataclass
class Trained:
    registry: str
    out: Path
    evals: str
    summary: mbp.RunSummary


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A classifier of six colours, trained for 80 steps through ``mbp.run``."""
    folder = tmp_path_factory.mktemp("user-api")
    registry = folder / "registry.yaml"
    registry.write_text(qa_registry(HEAD))
    pairs = list(THINGS.items())
    write_tar(folder / "train.tar", [sample(f"t{i:03d}", *pairs[i % 6]) for i in range(48)])
    evals = [sample(f"e{i}", thing, colour) for i, (thing, colour) in enumerate(pairs)]
    evals.append(sample("e6", "night", "black"))  # never seen: some answers miss
    write_tar(folder / "eval.tar", evals)
    out = folder / "run"
    summary = mbp.run(
        "ask", [str(folder / "train.tar")], out=out, eval_shards=[str(folder / "eval.tar")],
        settings=SETTINGS, registry=registry,
    )  # fmt: skip
    return Trained(str(registry), out, str(folder / "eval.tar"), summary)


def test_run_returns_the_summary_mbp_run_prints(trained: Trained, tmp_path: Path) -> None:
    train = str(Path(trained.evals).with_name("train.tar"))
    sets = [f"--set={key}={value}" for key, value in SETTINGS.items()]
    args = ["run", "ask", train, "--registry", trained.registry, "--out", str(tmp_path / "cli")]
    printed = invoke_mbp(*args, "--eval-shards", trained.evals, *sets, "--json")
    assert printed.returncode == 0, printed.stderr
    expected = json.loads(printed.stdout.replace(str(tmp_path / "cli"), str(trained.out)))
    summary = dict(trained.summary)
    assert summary["steps"] == 80 and summary["checkpoint"] == str(
        trained.out / "checkpoints" / "step-00000080"
    )
    # the same run from the command, its settings as --set lines (YAML values): equal but for timings
    assert summary.keys() == expected.keys()
    for key in summary.keys() - {"row_plan", "step_plan"}:
        assert summary[key] == expected[key], key
    # a setting the pipeline lacks is one line naming it, before anything trains
    with pytest.raises(ConfigError, match=r"^--set: train\.stepz"):
        mbp.run("ask", [train], out=tmp_path / "bad", settings={"train.stepz": 3}, registry=trained.registry)


def test_load_takes_a_run_folders_best_else_its_newest(trained: Trained, tmp_path: Path) -> None:
    best = trained.summary["best"]
    assert best is not None
    assert mbp.load(trained.out).path == Path(best["checkpoint"]) == trained.out / "checkpoints" / "best"
    copy = tmp_path / "run"
    shutil.copytree(trained.out, copy)
    shutil.rmtree(copy / "checkpoints" / "best")
    assert mbp.load(copy).path == copy / "checkpoints" / "step-00000080"
    for step in (copy / "checkpoints").iterdir():
        shutil.rmtree(step)
    with pytest.raises(CheckpointError) as caught:
        mbp.load(copy)
    assert str(caught.value) == f"{copy}: a run folder without a checkpoint (none in {copy / 'checkpoints'})"


def test_a_bad_checkpoint_path_is_one_line_naming_it_as_the_cli_gives(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(MbpError) as caught:
        mbp.load(missing)
    assert isinstance(caught.value, CheckpointError)
    assert str(caught.value) == f"{missing}: not a checkpoint (config.json missing)"
    cli = invoke_mbp("generate", "--checkpoint", str(missing))
    assert cli.returncode == 1 and cli.stderr.strip() == f"mbp: error: {caught.value}"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'broken' / 'config.json'}: unreadable"):
        mbp.load(tmp_path / "broken")


def test_a_pipeline_that_does_not_fit_the_checkpoint_is_refused(trained: Trained, tmp_path: Path) -> None:
    checkpoint = trained.out / "checkpoints" / "best"
    other = tmp_path / "other.yaml"
    other.write_text(tiny_registry("lm", {"txt": "text"}, "type: lm", (32, 16), 4))
    with pytest.raises(ConfigError) as fields:
        mbp.load(checkpoint, pipeline="lm", registry=other)
    assert str(fields.value) == (
        f"{checkpoint}: checkpoint of pipeline 'ask' (fields question: text, answer: text) "
        "does not fit pipeline 'lm' (fields txt: text)"
    )
    wide = tmp_path / "wide.yaml"
    wide.write_text(tiny_registry("ask", {"question": "text", "answer": "text"}, HEAD, (48, 16), 4))
    with pytest.raises(ConfigError) as model:
        mbp.load(checkpoint, registry=wide)  # the checkpoint's pipeline name, in another registry
    assert str(model.value) == (
        f"{checkpoint}: checkpoint of pipeline 'ask' is not a model of pipeline 'ask': "
        "model.stages.0.dim: checkpoint has 32, the pipeline 48"
    )
    cli = invoke_mbp("eval", "ask", trained.evals, "--checkpoint", str(checkpoint), "--registry", str(wide))
    assert cli.returncode == 2 and cli.stderr.strip() == f"mbp: error: {model.value}"


def test_score_is_what_mbp_eval_prints(trained: Trained) -> None:
    checkpoint = str(trained.out / "checkpoints" / "best")
    printed = invoke_mbp(
        "eval", "ask", trained.evals, "--checkpoint", checkpoint, "--registry", trained.registry, "--json"
    )
    assert printed.returncode == 0, printed.stderr
    metrics = json.loads(printed.stdout)["metrics"]
    assert metrics["eval_samples"] == 7
    assert mbp.load(checkpoint).score(trained.evals) == metrics  # the pipeline the checkpoint recorded
    assert mbp.load(checkpoint, pipeline="ask", registry=trained.registry).score([trained.evals]) == metrics
    with pytest.raises(MbpError, match="no shard matches"):
        mbp.load(checkpoint).score(str(Path(trained.evals).with_name("none-*.tar")))


def test_answer_is_the_prediction_mbp_eval_counts(trained: Trained) -> None:
    model = mbp.load(trained.out)
    metrics = model.score(trained.evals)
    cases = [*THINGS.items(), ("night", "black")]
    answers = [model.answer({"question": question(thing)}) for thing, _ in cases]
    confusion: dict[str, dict[str, int]] = {}
    for (_, truth), answer in zip(cases, answers, strict=True):
        row = confusion.setdefault(truth, {})
        row[answer] = row.get(answer, 0) + 1
    assert metrics["confusion"] == {truth: confusion[truth] for truth in sorted(confusion)}
    hits = sum(answer == truth for (_, truth), answer in zip(cases, answers, strict=True))
    assert metrics["accuracy"] == pytest.approx(hits / len(cases))
    # the answer field, given, is not read: the prompt ends where its payload begins
    assert model.answer({"question": question("sky"), "answer": "green"}) == answers[0]
    with pytest.raises(MbpError, match="missing field 'question'"):
        model.answer({"answer": "blue"})


def test_mbp_eval_counts_a_hit_exactly_where_answer_is_the_truth(trained: Trained, tmp_path: Path) -> None:
    """Evaluation takes a hit (every answer byte and the END the argmax) without generating; here half
    the truths are what greedy decoding writes, so hits and misses both occur, for ``classify`` and
    ``vqa``."""
    model = mbp.load(trained.out)
    samples, truths = [], []
    for index, thing in enumerate(THINGS):
        said = model.continuation(fields=[FieldValue("question", question(thing).encode())], max_bytes=64)
        closed = said.generated[-1] == END  # an answer the sample's EOS cuts off is a miss
        truth = said.payload.decode("utf-8", "replace") if index % 2 and closed else "nothing"
        samples.append(sample(f"h{index}", thing, truth))
        truths.append(truth)
    write_tar(tmp_path / "hits.tar", samples)
    vqa = tmp_path / "vqa.yaml"
    vqa.write_text(qa_registry("type: vqa, context_weight: 1"))  # the same fields and model
    asking = mbp.load(trained.out, pipeline="ask", registry=vqa)
    answers = [model.answer({"question": question(thing)}) for thing in THINGS]
    assert [asking.answer({"question": question(thing)}) for thing in THINGS] == answers
    hits = sum(a == t for a, t in zip(answers, truths, strict=True))
    assert 1 <= hits < len(THINGS)
    for loaded in (model, asking):
        assert loaded.score(tmp_path / "hits.tar")["accuracy"] == pytest.approx(hits / len(THINGS))


def test_bits_per_byte_is_the_bpb_score_gives_that_sample(trained: Trained, tmp_path: Path) -> None:
    model = mbp.load(trained.out)
    write_tar(tmp_path / "one.tar", [sample("x", "grass", "green")])
    scored = model.bits_per_byte({"question": question("grass"), "answer": b"green"})
    assert np.isfinite(scored)
    assert scored == pytest.approx(model.score(tmp_path / "one.tar")["bpb"], rel=1e-5)
    letters = np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz"), 5)
    noise = model.bits_per_byte({"question": "".join(letters) + "?", "answer": "qzvk"})
    assert scored < noise - 0.5  # learnt: the training data's text costs fewer bits than random letters
    with pytest.raises(
        ConfigError, match="pipeline 'ask' has fields question, answer: give a value for each"
    ):
        model.bits_per_byte(b"what colour?")


def test_generate_repeats_for_a_seed_and_is_what_mbp_generate_writes(trained: Trained) -> None:
    model = mbp.load(trained.out)
    fields = {"question": question("rose")}
    sampled = [
        model.generate(fields=fields, temperature=1.0, seed=seed, max_bytes=30) for seed in (3, 3, 4, 5, 6)
    ]
    assert sampled[0] == sampled[1] and len(set(sampled[1:])) > 1
    greedy = model.generate(fields=fields, max_bytes=64)
    assert greedy.decode("utf-8", "replace") == model.answer(fields)  # greedy to the segment's end
    checkpoint = str(trained.out / "checkpoints" / "best")
    printed = invoke_mbp(
        "generate", "--checkpoint", checkpoint, "--field", f"question={question('rose')}", "--max-bytes", "64"
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == greedy.decode("utf-8", "replace") + "\n"
    continued = model.generate(b"bl", fields=[("question", question("sky"))], max_bytes=5)
    assert len(continued) <= 5
    for call, message in [
        (lambda: model.generate(temperature=float("nan")), "temperature nan: expected a finite number"),
        (lambda: model.generate(codec="jpeg"), "codec jpeg: not a registered codec"),
        (
            lambda: model.generate(fields={"scene": b""}),
            "field scene: not a field of the checkpoint's pipeline",
        ),
        (lambda: model.generate(max_bytes=0), "max_bytes 0: expected 1 or more"),
    ]:
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value).startswith(message)


def test_a_checkpoint_without_a_pipeline_generates_and_says_what_else_needs_one(
    tmp_path: Path, components
) -> None:
    from mbp.config import ModelConfig
    from mbp.model.build import build_model
    from mbp.model.checkpoint_files import save_model

    config = ModelConfig.model_validate(
        {"stages": [{"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1},
                    {"backbone": {"type": "transformer", "heads": 2}, "dim": 16, "layers": 1, "patch": 4}]}
    )  # fmt: skip
    save_model(tmp_path / "bare", build_model(config, components), config)
    model = mbp.load(tmp_path / "bare")
    assert model.pipeline_name is None and model.fields == []
    assert len(model.generate("a", max_bytes=6, temperature=1.0, seed=0)) <= 6
    with pytest.raises(ConfigError) as caught:
        model.answer({"question": "q"})
    assert str(caught.value) == (
        f"{tmp_path / 'bare'}: checkpoint has no pipeline, which answer needs: "
        "pass mbp.load(path, pipeline=NAME, registry=FILE)"
    )


def test_import_mbp_loads_neither_torch_nor_the_api_until_used() -> None:
    code = "import sys, mbp; print('torch' in sys.modules, 'mbp.loaded' in sys.modules, callable(mbp.load))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False", "True"], result.stderr
