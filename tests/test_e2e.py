"""The whole ReSet pipeline through kfp.local as `make demo` runs it, at tiny sizes: generation and
evaluation by vLLM's CPU build through the run's one vLLM worker (a tiny random Llama whose
attention head size, 64, vLLM's CPU kernels support), data and the base model on a real S3 endpoint
(moto server), tracking on a real `mlflow server` process (artifacts in S3)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import mlflow
import pytest

from pipelines.cli import main
from pipelines.reset_pipeline import STEP_NAMES
from reset.data.records import write_jsonl
from reset.data.storage import upload

from .conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, s3, mlflow_server, vllm_tiny_dir, demo):
    tmp = tmp_path_factory.mktemp("e2e")
    s3.create_bucket(Bucket="data")
    ifs, cds = demo
    write_jsonl(tmp / "if.jsonl", ifs[:20])
    with open(tmp / "if.jsonl", "a") as fh:  # line 21: a bad row, to be quarantined, not lost
        fh.write('{"id": "broken", "source": "x", "kind": "instruction"}\n')
    write_jsonl(tmp / "cd.jsonl", cds[:20])
    upload(tmp / "if.jsonl", "s3://data/sets/if.jsonl")
    upload(tmp / "cd.jsonl", "s3://data/sets/cd.jsonl")
    upload(vllm_tiny_dir, "s3://data/models/tiny")

    mp = pytest.MonkeyPatch()
    mp.setenv("RESET_CACHE_DIR", str(tmp / "cache"))
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    if not os.environ.get("RESET_VLLM_PYTHON") and not (REPO / ".venv-vllm" / "bin" / "python").exists():
        pytest.fail("no vLLM environment (RESET_VLLM_PYTHON or .venv-vllm: `make vllm`, which make test runs)")
    env_before = dict(os.environ)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = main([
            "run", "--config", str(REPO / "configs" / "tiny.yaml"), "--output-dir", str(tmp / "runs"),
            "--set", "data.instruction=[s3://data/sets/if.jsonl]",
            "--set", "data.grounded=[s3://data/sets/cd.jsonl]",
            "--set", "data.max_bad_fraction=0.1",
            "--set", "data.train_size=20",
            "--set", "model.base=s3://data/models/tiny",
            "--set", f"tracking.tracking_uri={mlflow_server}",
            "--set", "tracking.experiment=e2e",
            "--set", "register.model_name=reset-e2e",
            # as make demo: vLLM's CPU build generates and evaluates (tiny.yaml's head size 16 has no kernel)
            "--set", "generate.backend=vllm", "--set", "evaluate.backend=vllm",
            "--set", "generate.vllm_kv_cache_gb=1",
            # a continued fine-tuning too small to change a single answer: the gate must say so
            "--set", "continued_train.learning_rate=1e-12",
            ])
        env_after = dict(os.environ)
    finally:
        mp.undo()
    assert rc == 0, out.getvalue()
    # the run's job id and driver were for its tasks: this process's environment is as it was
    assert env_after == env_before
    (tmp / "stdout.txt").write_text(out.getvalue())
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("e2e")
    yield client, exp, tmp
    mlflow.set_tracking_uri(None)


def test_the_cli_prints_one_line_per_step_and_files_task_output_in_logs(pipeline_run):
    """The quiet CLI: a start and an end line per step (with its time), the table, where the logs
    are; kfp.local's executor dumps and library output only in the run's per-task logs."""
    _, _, tmp = pipeline_run
    text = (tmp / "stdout.txt").read_text()
    lines = text.splitlines()
    assert len(lines) <= 45, text
    for step in STEP_NAMES:
        ends = [x for x in lines if x.split()[:1] == [step] and x.rstrip().endswith("...") is False]
        assert ends and any(ch.isdigit() for ch in ends[-1]), (step, text)
    assert "| Model |" in text and "logs: " in text
    assert "promoted to @champion" not in text and "stays challenger, NOT promoted" in text
    assert "executorInput" not in text and "Executing task" not in text and "Downloading" not in text
    summary = json.loads((tmp / "runs" / "last_run.json").read_text())
    logs = Path(summary["run_dir"]) / "logs"
    assert (logs / "pipeline.log").exists()
    finetune_log = (logs / "finetune-mtl.log").read_text()
    assert "Executing task" in finetune_log and "executor" in finetune_log.lower()
    assert "[finetune]" in finetune_log


def test_generate_and_evaluate_ran_on_the_runs_one_vllm_worker(pipeline_run):
    """As in make demo: one vLLM worker (vLLM's CPU build, its own environment) for the run; the
    generate step's requests and the evaluate step's three models (base, MTL and ReSet, their
    adapters merged as the weights load) were served by it."""
    client, exp, tmp = pipeline_run
    assert "vLLM: one worker for the whole run" in (tmp / "stdout.txt").read_text()
    run_dir = Path(json.loads((tmp / "runs" / "last_run.json").read_text())["run_dir"])
    engine_log = (run_dir / "vllm" / "engine.log").read_text()
    assert len([x for x in engine_log.splitlines() if x.startswith("vllm-worker: serving on ")]) == 1
    assert len([x for x in engine_log.splitlines() if x.startswith("vllm-worker: served ")]) == 2  # two steps
    for step in ("generate", "evaluate"):
        assert "[generate:vllm] served by the run's engine server" in (run_dir / "logs" / f"{step}.log").read_text()
    assert "3 model(s) (base, mtl, reset)" in (run_dir / "logs" / "evaluate.log").read_text()
    gen = client.search_runs([exp.experiment_id], "tags.`reset.step` = 'generate'")[0]
    assert gen.data.tags["generate.backend"] == "vllm" and "generate.fallback_reason" not in gen.data.tags


def test_parent_and_child_runs_with_metrics(pipeline_run):
    client, exp, tmp = pipeline_run
    parents = client.search_runs([exp.experiment_id], "tags.`reset.role` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.base"] == "s3://data/models/tiny"
    assert parent.data.params["select.mode"] == "reset"
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    steps = {r.data.tags["reset.step"]: r for r in kids}
    assert set(steps) == set(STEP_NAMES)
    assert all(r.info.status == "FINISHED" for r in kids)

    assert steps["mix"].data.metrics["rejected"] == 1
    assert steps["mix"].data.metrics["train"] == 20
    loss = client.get_metric_history(steps["finetune-mtl"].info.run_id, "loss")
    assert len(loss) == steps["finetune-mtl"].data.metrics["steps"] >= 2
    gen = steps["generate"].data.metrics
    assert gen["candidates"] == gen["prompts"] * (1 + 2 + 1)  # greedy + 2 samples + the reference
    assert 0.0 <= steps["judge"].data.metrics["mean_combined"] <= 1.0
    assert steps["select"].data.metrics["selected"] >= 1
    ev = steps["evaluate"].data.metrics
    for model in ("base", "mtl", "reset"):
        for axis in ("if_prompt_acc", "faithfulness", "task"):
            assert 0.0 <= ev[f"{model}.{axis}"] <= 1.0
    # the registry decision follows the evaluate step's gate: a ReSet model that answers exactly as its
    # MTL model does (learning rate 1e-12) stays a challenger, and the gate says why
    decision = client.download_artifacts(steps["evaluate"].info.run_id, "decision.json", str(tmp / "d"))
    gates = json.loads(Path(decision).read_text())["gates"]
    assert not gates["mtl"]["passed"] and gates["mtl"]["reason"].startswith("answers byte-identical to MTL's on all")
    assert steps["register"].data.metrics["promoted"] == 0.0
    assert steps["register"].data.tags["promotion"] == gates["mtl"]["reason"] + ": stays challenger, NOT promoted"
    assert parent.data.tags["reset.decision"].startswith(gates["mtl"]["reason"])
    assert parent.data.tags["reset.test_digest"] == steps["mix"].data.tags["reset.test_digest"]

    # The summary the CLI wrote agrees with MLflow.
    summary = json.loads((tmp / "runs" / "last_run.json").read_text())
    assert summary["parent_run_id"] == parent.info.run_id
    assert set(summary["step_seconds"]) == set(STEP_NAMES)
    assert summary["results"]["reset"]["faithfulness"] == pytest.approx(ev["reset.faithfulness"])


def test_artifacts_land_in_s3(pipeline_run, s3):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert any(k.endswith("judged_samples.json") for k in keys)
    assert any(k.endswith("comparison.md") for k in keys)
    assert any(k.endswith("quarantine/rejected_rows") or "/quarantine/" in k for k in keys)
    assert any(k.endswith("model.safetensors") for k in keys)  # the registered model's weights
    assert any(k.endswith("MLmodel") for k in keys)


def test_quarantine_names_the_s3_file_and_line(pipeline_run):
    client, exp, tmp = pipeline_run
    mix = client.search_runs([exp.experiment_id], "tags.`reset.step` = 'mix'")[0]
    local = client.download_artifacts(mix.info.run_id, "quarantine", str(tmp / "q"))
    import pathlib

    rows = [json.loads(x) for f in pathlib.Path(local).iterdir() for x in f.read_text().splitlines() if x.strip()]
    assert rows and rows[0]["file"] == "s3://data/sets/if.jsonl" and rows[0]["line"] == 21
    assert "missing field" in rows[0]["reason"] and "broken" in rows[0]["raw"]


def test_registry_aliases_and_offline_load(pipeline_run):
    client, exp, _ = pipeline_run
    chall = client.get_model_version_by_alias("reset-e2e", "challenger")
    assert str(chall.version) == "1" and float(chall.tags["metric.faithfulness"]) >= 0.0
    # the version records the test split it was judged on, and which use of it this was
    mix = client.search_runs([exp.experiment_id], "tags.`reset.step` = 'mix'")[0]
    assert chall.tags["reset.test_digest"] == mix.data.tags["reset.test_digest"] and chall.tags["reset.test_use"] == "1"
    assert (
        client.get_registered_model("reset-e2e").tags["reset.test_uses." + chall.tags["reset.test_digest"][:16]] == "1"
    )
    model = mlflow.pyfunc.load_model("models:/reset-e2e@challenger")
    out = model.predict([{"instruction": "Say hello."}])
    assert len(out) == 1 and isinstance(out[0], str)


def test_a_failing_step_stops_the_pipeline_and_fails_the_parent_run(tmp_path, tiny_model_dir, demo, capsys):
    """mix finds more bad rows than data.max_bad_fraction allows (preflight only checks that the file
    reads): the run stops there, no later step starts, the CLI exits 1 with the reason and the last
    30 lines of the step's log, and the exit handler still closes the MLflow parent run as FAILED."""
    bad = tmp_path / "if.jsonl"
    write_jsonl(bad, demo[0][:4])
    with open(bad, "a") as fh:
        for i in range(8):
            fh.write(json.dumps({"id": f"broken-{i}", "source": "x", "kind": "instruction"}) + "\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("RESET_CACHE_DIR", str(tiny_model_dir.parent.parent))
    try:
        rc = main(
            [
                "run",
                "--config",
                str(REPO / "configs" / "tiny.yaml"),
                "--output-dir",
                str(tmp_path / "runs"),
                "--set",
                f"data.instruction=[{bad}]",
                "--set",
                "tracking.experiment=fail",
            ]
        )
    finally:
        mp.undo()
    assert rc == 1
    err = capsys.readouterr().err
    assert "pipeline failed" in err
    assert "failed in step mix" in err and "max_bad_fraction" in err and str(bad) in err
    log_line = next(x for x in err.splitlines() if x.startswith("--- full log: "))
    log = Path(log_line.split(": ", 1)[1].split(" (", 1)[0])
    assert log.name == "mix.log" and "DataError" in log.read_text()
    assert 30 <= len(err.splitlines()) <= 40  # the reason, 30 log lines, the path
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name("fail")
        parent = client.search_runs([exp.experiment_id], "tags.`reset.role` = 'pipeline'")[0]
        assert parent.info.status == "FAILED"
        kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        status = {r.data.tags["reset.step"]: r.info.status for r in kids}
        assert status == {"mix": "FAILED"}  # nothing after it started
        assert client.search_registered_models() == []
    finally:
        mlflow.set_tracking_uri(None)
