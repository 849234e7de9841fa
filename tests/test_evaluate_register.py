"""Evaluation metrics and table, and registry promotion against a local MLflow store."""

from __future__ import annotations

import contextlib

import mlflow
import pytest

from reset.config import EvaluateConfig, JudgeConfig, ModelConfig, RegisterConfig
from reset.data.records import Candidate, Example
from reset.evaluation import comparison_table, evaluate, point_metrics, score_example
from reset.judging import default_judges, judge
from reset.registry import log_and_register

WEIGHTS = {"instruction": 1.0, "faithfulness": 1.0, "task": 1.0}


def _if_example(eid: str) -> Example:
    return Example(id=eid, source="t", kind="instruction", instruction="Say hi without commas.", response="hi there",
                   constraints=[{"id": "punctuation:no_comma", "kwargs": {}},
                                {"id": "change_case:english_lowercase", "kwargs": {}}])


def _rows(exs, texts):
    cands = [Candidate(id=f"{e.id}/0", example_id=e.id, text=t) for e, t in zip(exs, texts, strict=True)]
    js = judge(exs, cands, WEIGHTS, default_judges())
    return [score_example(e, t, j) for e, t, j in zip(exs, texts, js, strict=True)]


def test_metrics_follow_ifeval_prompt_and_instruction_level():
    exs = [_if_example("a"), _if_example("b")]
    m = point_metrics(_rows(exs, ["hi there friend", "Hi, there"]))  # a: both followed; b: both broken
    assert m["if_prompt_acc"] == pytest.approx(0.5)
    assert m["if_instruction_acc"] == pytest.approx(0.5)
    m = point_metrics(_rows(exs, ["hi there friend", "hi, there"]))  # b: lowercase followed, comma broken
    assert m["if_prompt_acc"] == pytest.approx(0.5)
    assert m["if_instruction_acc"] == pytest.approx(0.75)
    assert m["if_family.punctuation"] == pytest.approx(0.5) and m["if_family.change_case"] == pytest.approx(1.0)
    assert "faithfulness" not in m and m["n_if_prompts"] == 2  # no grounded example: no faithfulness figure


def test_faithfulness_is_split_by_task_type_and_counts_only_right_extractive_answers(demo):
    grounded = demo[1]
    ext = next(e for e in grounded if e.task == "extractive" and not e.meta.get("counterfactual"))
    abs_ = next(e for e in grounded if e.task == "abstractive")
    # the reference answer (right, grounded) and an unrelated text
    m = point_metrics(_rows([ext, abs_], [ext.response, "zebra quantum saxophone"]))
    assert m["faithfulness_extractive"] > 0.5 and m["answer_correct"] == 1.0
    assert m["faithfulness_abstractive"] == pytest.approx(0.0)
    assert m["faithfulness"] == pytest.approx(m["faithfulness_extractive"] / 2)
    # copying the passage: K-Precision 1.0 on both, but the extractive copy is no answer
    m = point_metrics(_rows([ext, abs_], [ext.context, abs_.context]))
    assert m["k_precision_extractive"] == m["k_precision_abstractive"] == pytest.approx(1.0)
    assert m["answer_correct"] == 0.0 and m["faithfulness_extractive"] == 0.0
    assert m["faithfulness_abstractive"] == pytest.approx(1.0)


def test_comparison_table_has_a_row_per_model_and_bolds_the_best():
    table = comparison_table({"base": {"faithfulness": 0.2, "if_prompt_acc": 0.5},
                              "reset": {"faithfulness": 0.4, "if_prompt_acc": 0.1}})
    lines = table.splitlines()
    assert lines[0].startswith("| Model |") and len(lines) == 4
    assert "**0.400**" in lines[3] and "**0.500**" in lines[2]
    assert "n/a" in lines[2]  # a metric the model has no figure for


def test_evaluate_runs_a_real_model_on_held_out_prompts(tiny_model_dir, demo):
    exs = demo[0][:2] + demo[1][:2]
    metrics, rows = evaluate(tiny_model_dir, exs, EvaluateConfig(max_new_tokens=5, batch_size=4), ModelConfig(),
                             JudgeConfig(weights=WEIGHTS), model_name="tiny", log=lambda _: None)
    assert len(rows) == 4 and {r["example_id"] for r in rows} == {e.id for e in exs}
    assert all(r["model"] == "tiny" for r in rows)
    assert metrics["n_examples"] == 4
    for k in ("if_prompt_acc", "faithfulness", "task", "combined"):
        assert 0.0 <= metrics[k] <= 1.0
    # one row per example with every per-example value; the judges' own scores among them
    for r, e in zip(rows, exs, strict=True):
        assert r["example_id"] == e.id and isinstance(r["response"], str)
        assert (r["if_pass"] is None) == (not e.constraints)
        assert (r["k_precision"] is None) == (e.context is None)
        assert {"judge.rules", "judge.k-precision", "judge.reference"} <= set(r)


@pytest.fixture()
def local_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("reg", artifact_location=(tmp_path / "art").as_uri())
    yield exp
    mlflow.set_tracking_uri(None)


def _register(model_dir, exp, metrics, cfg):
    with mlflow.start_run(experiment_id=exp):
        return log_and_register(model_dir, metrics, cfg, max_new_tokens=4)


def test_registered_model_loads_and_answers_offline(tiny_model_dir, local_mlflow):
    import pandas as pd

    from reset.config import DecodingSetting, GenerateConfig
    from reset.models.generation import generate

    _register(
        tiny_model_dir, local_mlflow, {"if_prompt_acc": 0.1, "faithfulness": 0.1}, RegisterConfig(model_name="srv")
    )
    model = mlflow.pyfunc.load_model("models:/srv@challenger")
    rows = [{"instruction": "Say hello.", "context": None}, {"instruction": "Who?", "context": "Ada wrote it."}]
    out = model.predict(pd.DataFrame(rows))
    # The served model answers exactly as the checkpoint does with greedy decoding (max_new_tokens 4).
    exs = [
        Example(
            id=str(i),
            source="s",
            kind="grounded" if r["context"] else "instruction",
            instruction=r["instruction"],
            response="-",
            context=r["context"],
        )
        for i, r in enumerate(rows)
    ]
    direct = generate(
        tiny_model_dir,
        exs,
        GenerateConfig(grid=[DecodingSetting(temperature=0.0, top_p=1.0)], max_new_tokens=4),
        ModelConfig(),
        log=lambda _: None,
    )
    assert out == [c.text for c in direct]


def _alias_at_once(uri, barrier, version, errors):
    mlflow.set_tracking_uri(uri)
    from reset.registry import set_alias

    client = mlflow.MlflowClient()
    barrier.wait()
    try:
        set_alias(client, "race", "challenger", version)
    except Exception as exc:  # reported to the test, which fails on it
        errors.put(f"{type(exc).__name__}: {exc}"[:300])


def test_runs_that_alias_one_model_at_once_all_succeed(tmp_path):
    """MLflow's SQL store reads, then inserts an alias: two runs at once both inserted and one failed
    on the unique key (two local runs sharing one SQLite store). Four processes alias the same model
    at once, ten times over (without the retry 4 of 10 rounds failed here)."""
    import multiprocessing as mp

    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        client.create_registered_model("race")
        for _ in range(4):
            client.create_model_version("race", source=(tmp_path / "src").as_uri())
        ctx = mp.get_context("fork")
        for _ in range(10):
            with contextlib.suppress(MlflowException):
                client.delete_registered_model_alias("race", "challenger")
            barrier, errors = ctx.Barrier(4), ctx.Queue()
            procs = [ctx.Process(target=_alias_at_once, args=(uri, barrier, str(v), errors)) for v in range(1, 5)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
            assert [p.exitcode for p in procs] == [0] * 4
            assert errors.empty(), errors.get()
            assert str(client.get_model_version_by_alias("race", "challenger").version) in {"1", "2", "3", "4"}
    finally:
        mlflow.set_tracking_uri(None)


def test_set_alias_retries_only_a_duplicate_row():
    from mlflow.exceptions import MlflowException

    from reset.registry import set_alias

    class Store:  # the tracking store's answers, injected
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def set_registered_model_alias(self, name, alias, version):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    dup = MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.name")
    ok = Store([dup, dup])
    set_alias(ok, "m", "challenger", "2")
    assert ok.calls == 3
    other = Store([MlflowException("Registered model version 'm' v9 not found", error_code="RESOURCE_DOES_NOT_EXIST")])
    with pytest.raises(MlflowException, match="not found"):
        set_alias(other, "m", "challenger", "9")
    assert other.calls == 1
    always = Store([dup] * 5)
    with pytest.raises(MlflowException, match="UNIQUE"):
        set_alias(always, "m", "challenger", "2", attempts=5)
    assert always.calls == 5
