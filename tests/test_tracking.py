"""MLflow parent/child runs and how the exit handler closes the parent."""

from __future__ import annotations

import contextlib
import os

import mlflow
import pytest

from reset import steps, tracking
from reset.config import TrackingConfig


@pytest.fixture()
def cfg(tmp_path):
    c = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t")
    yield c
    mlflow.set_tracking_uri(None)


def _children(cfg, parent):
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    return {r.data.tags[tracking.STEP_TAG]: r.info.status
            for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")}


@contextlib.contextmanager
def monkeypatch_env(key: str, value: str):
    """The KFP run id a step finds its parent run by, as a task has it."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def test_parent_logs_config_and_children_nest(cfg):
    parent = steps.start_run({"train": {"learning_rate": 0.1},
                              "tracking": {"tracking_uri": cfg.tracking_uri, "experiment": "t"}}, "job-1")
    run = mlflow.MlflowClient().get_run(parent)
    assert run.data.params["train.learning_rate"] == "0.1"
    assert run.data.tags[tracking.JOB_TAG] == "job-1"
    assert run.info.status == "RUNNING"
    with tracking.step_run(cfg, "mix", {"seed": 3}, parent_run_id=parent):
        mlflow.log_metric("rows", 5)
    assert _children(cfg, parent) == {"mix": "FINISHED"}
    assert tracking.find_parent(cfg, "job-1") == parent
    assert tracking.find_parent(cfg, "job-2") is None


def test_start_run_refuses_a_bad_config_by_key(cfg):
    with pytest.raises(ValueError, match="select.threshold"):
        steps.start_run({"select": {"threshold": 2.0}, "tracking": {"tracking_uri": cfg.tracking_uri}}, "job-x")


def test_a_failing_step_fails_its_run_and_the_parent(cfg):
    parent = tracking.start_parent(cfg, {}, {tracking.JOB_TAG: "job-f"})
    with tracking.step_run(cfg, "mix", parent_run_id=parent):
        pass
    with pytest.raises(RuntimeError, match="boom"), tracking.step_run(cfg, "generate", parent_run_id=parent):
        raise RuntimeError("boom")
    assert _children(cfg, parent) == {"mix": "FINISHED", "generate": "FAILED"}
    assert (
        steps.finish_run(steps.config(tracking={"tracking_uri": cfg.tracking_uri, "experiment": "t"}), "job-f")
        == "FAILED"
    )
    assert mlflow.MlflowClient().get_run(parent).info.status == "FAILED"


def test_parent_finishes_only_when_the_last_step_ran(cfg):
    parent = tracking.start_parent(cfg, {}, {tracking.JOB_TAG: "job-ok"})
    with tracking.step_run(cfg, "mix", parent_run_id=parent):
        pass
    assert tracking.finish_parent(cfg, parent) == "FAILED"  # register never ran
    parent = tracking.start_parent(cfg, {}, {tracking.JOB_TAG: "job-ok2"})
    for step in ("mix", "register"):
        with tracking.step_run(cfg, step, parent_run_id=parent):
            pass
    assert (
        steps.finish_run(steps.config(tracking={"tracking_uri": cfg.tracking_uri, "experiment": "t"}), "job-ok2")
        == "FINISHED"
    )


def test_finish_without_a_parent_is_a_clean_no_op(cfg):
    assert (
        steps.finish_run(steps.config(tracking={"tracking_uri": cfg.tracking_uri, "experiment": "t"}), "never-started")
        == "NONE"
    )


def test_local_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = TrackingConfig(experiment="local")
    exp = tracking.experiment_id(c)
    location = mlflow.MlflowClient().get_experiment(exp).artifact_location
    assert location == (tmp_path / "runs" / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(None)


def test_a_retried_step_counts_by_its_newest_attempt(cfg):
    parent = tracking.start_parent(cfg, {}, {tracking.JOB_TAG: "job-r"})
    with pytest.raises(RuntimeError), tracking.step_run(cfg, "mix", parent_run_id=parent):
        raise RuntimeError("first attempt")
    for step in ("mix", "register"):  # KFP's retry of mix succeeds, then the rest runs
        with tracking.step_run(cfg, step, parent_run_id=parent):
            pass
    assert tracking.finish_parent(cfg, parent) == "FINISHED"


def test_select_step_logs_keep_rates_for_free_text_source_names(cfg, tmp_path):
    from reset.data.records import Candidate, Example, Judgment, write_jsonl

    ex = Example(id="e1", source="dolly (15k), v2", kind="instruction", instruction="Hi?", response="Hello.")
    write_jsonl(tmp_path / "seen.jsonl", [ex])
    write_jsonl(tmp_path / "c.jsonl", [Candidate(id="e1/0", example_id="e1", text="Hello.")])
    write_jsonl(
        tmp_path / "j.jsonl", [Judgment(candidate_id="e1/0", example_id="e1", scores={"task": 1.0}, combined=1.0)]
    )
    with monkeypatch_env(tracking.JOB_ENV, "job-sel"):
        tracking.start_parent(cfg, {}, {tracking.JOB_TAG: "job-sel"})
        rep = steps.select(
            str(tmp_path / "seen.jsonl"),
            str(tmp_path / "c.jsonl"),
            str(tmp_path / "j.jsonl"),
            steps.config(tracking={"tracking_uri": cfg.tracking_uri, "experiment": "t"}),
            out_selected=str(tmp_path / "sel.jsonl"),
        )
    assert rep["selected"] == 1
    run = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("t").experiment_id], "tags.`reset.step` = 'select'"
    )[0]
    assert run.data.metrics["keep_rate.dolly _15k__ v2.instruction"] == 1.0


def test_log_input_retries_only_a_duplicate_row(cfg, tmp_path, monkeypatch):
    """Any other store error is raised at once (the race itself, with SQLite's and PostgreSQL's own
    errors, is in tests/test_store_races.py)."""
    from mlflow.exceptions import MlflowException

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    calls = []
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_experiment(cfg.experiment)

    def broken(dataset, **kw):
        calls.append(dataset.name)
        raise MlflowException("the store is read-only")

    monkeypatch.setattr(mlflow, "log_input", broken)
    with mlflow.start_run(), pytest.raises(MlflowException, match="read-only"):
        tracking.log_input(tracking.dataset(str(data), "train", "abc"), context="train")
    assert calls == ["train"]


def test_a_step_logs_where_its_time_went(cfg):
    """step.startup_s (the process's start to the step's), step.body_s and each phase the step timed:
    what bench/profile_run.py tables."""
    from reset import progress

    parent = tracking.start_parent(cfg, {})
    progress.add_phase("compute", 99.0)  # left over from before the step: not the step's
    with tracking.step_run(cfg, "mix", parent_run_id=parent) as run:
        with progress.timed("compute"):
            pass
        progress.add_phase("model_load", 1.5)
        progress.add_phase("model_load", 0.5)
    m = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert m["phase.model_load_s"] == 2.0 and 0.0 <= m["phase.compute_s"] < 99.0
    assert m["step.startup_s"] > 0.0 and m["step.body_s"] >= 0.0
    assert progress.process_age() > 0.0


def test_an_evaluation_of_several_models_counts_each_models_sampling(cfg):
    """evaluate answers with every model in one engine (vLLM: started once, weights swapped in) or
    one engine per model (transformers): the step's compute is all of their sampling."""
    from reset import progress
    from reset.models.generation import record_phases_of_many

    vllm = [{"engine_start_s": 4.0, "generate_s": g, "reload_s": 0.5, "models_in_engine": 3} for g in (10, 20, 30)]
    hf = [{"engine_start_s": 2.0, "generate_s": g} for g in (1.0, 2.0)]
    got = []
    for stats in (vllm, hf):
        with tracking.step_run(cfg, "evaluate") as run:
            record_phases_of_many(stats)
        m = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
        got.append((m["phase.engine_start_s"], m["phase.compute_s"], m.get("phase.model_load_s")))
    assert got == [(4.0, 60.0, 1.5), (4.0, 3.0, None)]
    assert progress.process_age() > 0.0


EXPERIMENT_STEPS = ["mix", "answer", "finetune-mtl", "generate", "judge", "select", "finetune-reset", "evaluate"]


def test_an_experiment_parent_finishes_when_its_report_is_written(cfg):
    """The experiment pipeline has no register step: its last task writes the report on the parent
    run. Every step finished and the report there: FINISHED; the report missing: FAILED."""
    got = []
    for report in (True, False):
        parent = tracking.start_parent(cfg, {}, {tracking.JOB_TAG: f"job-experiment-{report}"})
        for step in EXPERIMENT_STEPS:
            with tracking.step_run(cfg, step, parent_run_id=parent):
                pass
        if report:
            tracking.log_on_parent(parent, texts={"experiment.md": "# The paper's arms\n"})
        got.append((tracking.finish_parent(cfg, parent), mlflow.MlflowClient().get_run(parent).info.status))
    assert got == [("FINISHED", "FINISHED"), ("FAILED", "FAILED")]
