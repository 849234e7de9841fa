"""Preflight (reset/preflight.py): every problem a run would hit later is found before any task
starts, one line naming the config key and the cause, each endpoint asked once; `run` exits 2 with nothing
started. Against the real things: moto's S3 server, an `mlflow server` process, the fault-injecting
OpenAI-compatible server, the tiny model's files, a read-only mount."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.cli import main
from reset import preflight
from reset.config import load_config
from reset.data.storage import upload

from .conftest import REPO
from .fault_server import FaultConfig, FaultServer

TINY = REPO / "configs" / "tiny.yaml"


def cfg_with(*overrides: str):
    return load_config(TINY, list(overrides))


def lines(problems) -> list[str]:
    return [str(p) for p in problems]


@pytest.fixture()
def no_s3_credentials(monkeypatch, tmp_path):
    """An environment with no AWS credentials anywhere (no variables, no files, no metadata service)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    preflight._credentials.clear()
    yield
    preflight._credentials.clear()


@pytest.fixture()
def fresh_credentials():
    preflight._credentials.clear()
    yield
    preflight._credentials.clear()


# ------------------------------------------------------------------------------------ output dir
def test_an_output_path_that_is_a_file_or_under_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    assert lines(preflight.check_output_dir(f)) == [f"--output-dir: {f} is a file, not a directory"]
    assert lines(preflight.check_output_dir(f / "runs")) == [
        f"--output-dir: {f / 'runs'}: {f} is a file, not a directory"
    ]
    assert preflight.check_output_dir(tmp_path / "new" / "runs") == []
    assert not (tmp_path / "new").exists()  # the check creates nothing it leaves behind


def test_an_output_dir_on_a_read_only_file_system_fails_at_once_with_one_line(tmp_path):
    """The CLI on a read-only mount (a tmpfs mounted ro in a private mount namespace): exit 2,
    one problem line and a summary line, in seconds (it used to take 207 s of MLflow retries)."""
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is needed for the read-only mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f'mount -t tmpfs -o ro tmpfs "{ro}" && exec "$0" -m pipelines run '
            f'--config "{TINY}" --output-dir "{ro}/runs"',
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=300,  # guards against a hang only
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"preflight: --output-dir: {ro}/runs: cannot write there (Read-only file system)"
    ], proc.stderr
    # nothing started: no pipeline (its first line), no MLflow store (whose retries took 207 s)
    assert "Traceback" not in proc.stdout + proc.stderr and "ReSet pipeline" not in proc.stdout


# ------------------------------------------------------------------------------------------ model
def test_a_missing_model_directory_is_refused_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["run", "--config", str(TINY), "--output-dir", str(out), "--set", f"model.base={tmp_path}/no-such-model"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert err == [f"preflight: model.base: {tmp_path}/no-such-model: no such directory"]
    assert not out.exists()  # no run folder, no MLflow store: nothing started


def test_model_directories(tmp_path, tiny_model_dir):
    good = preflight.check_model(str(tiny_model_dir), "model.base", "local", "")
    assert good == []
    no_config = tmp_path / "no-config"
    shutil.copytree(tiny_model_dir, no_config)
    (no_config / "config.json").unlink()
    assert lines(preflight.check_model(str(no_config), "model.base", "local", "")) == [
        f"model.base: {no_config}: no config.json (expected a Hugging Face model directory)"
    ]
    bad_tok = tmp_path / "bad-tokenizer"
    shutil.copytree(tiny_model_dir, bad_tok)
    (bad_tok / "tokenizer.json").write_text("{ not json")
    (found,) = lines(preflight.check_model(str(bad_tok), "model.base", "local", ""))
    assert found.startswith(f"model.base: {bad_tok}: the tokenizer does not load: ")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    assert lines(preflight.check_model(str(no_weights), "model.base", "local", "")) == [
        f"model.base: {no_weights}: no weights (*.safetensors or *.bin) beside config.json"
    ]
    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_model_dir, bad_config)
    (bad_config / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (found,) = lines(preflight.check_model(str(bad_config), "model.base", "local", ""))
    assert found.startswith(f"model.base: {bad_config}: config.json does not load: ")
    assert lines(preflight.check_model("builtin:gpt-9", "model.base", "local", ""))[0].startswith(
        "model.base: unknown builtin model 'builtin:gpt-9'"
    )
    assert preflight.check_model("builtin:tiny-llama", "model.base", "local", str(tmp_path / "c")) == []


def test_a_model_and_data_on_s3(s3, tiny_model_dir, tmp_path, fresh_credentials):
    s3.create_bucket(Bucket="preflight")
    upload(tiny_model_dir, "s3://preflight/models/tiny")
    (tmp_path / "d.jsonl").write_text('{"id": "a"}\n')
    upload(tmp_path / "d.jsonl", "s3://preflight/data/d.jsonl")
    cfg = cfg_with(
        "model.base=s3://preflight/models/tiny",
        "data.instruction=[s3://preflight/data/d.jsonl]",
        "data.grounded=[s3://preflight/data/]",
    )
    assert preflight.check(cfg, output_dir=tmp_path / "runs") == []
    cfg = cfg_with(
        "model.base=s3://preflight/models/nothing-here",
        "data.instruction=[s3://preflight/data/missing.jsonl]",
        "data.grounded=[s3://no-such-bucket/x.jsonl]",
    )
    assert lines(preflight.check(cfg, output_dir=tmp_path / "runs")) == [
        "data.instruction[0]: s3://preflight/data/missing.jsonl: no such object or prefix",
        "data.grounded[0]: s3://no-such-bucket/x.jsonl: no bucket 'no-such-bucket' at this S3 endpoint",
        "model.base: s3://preflight/models/nothing-here: no such object or prefix",
    ]


def test_missing_s3_credentials_name_the_key_and_what_to_set(tmp_path, no_s3_credentials, capsys):
    rc = main(
        [
            "run",
            "--config",
            str(TINY),
            "--output-dir",
            str(tmp_path / "runs"),
            "--set",
            "data.instruction=[s3://data/sets/if.jsonl]",
            "--set",
            "model.base=s3://data/models/tiny",
        ]
    )
    err = capsys.readouterr().err.splitlines()
    why = (
        "no S3 credentials at hand: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for "
        "a non-AWS endpoint), or run where a role provides them"
    )
    assert rc == 2
    assert err == [
        f"preflight: data.instruction[0]: s3://data/sets/if.jsonl: {why}",
        f"preflight: model.base: s3://data/models/tiny: {why}",
        "preflight: 2 problems; nothing was started",
    ]
    assert not (tmp_path / "runs").exists()


def test_local_data_that_is_missing_or_unreadable(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = cfg_with(f"data.instruction=[{tmp_path}/nope.jsonl]", f"data.grounded=[{tmp_path}/empty, builtin:demo-nope]")
    assert lines(preflight.check_data(cfg, "local")) == [
        f"data.instruction[0]: {tmp_path}/nope.jsonl: no such file or directory",
        f"data.grounded[0]: {tmp_path}/empty: an empty directory",
        "data.grounded[1]: unknown builtin source 'builtin:demo-nope' (known: builtin:demo-instruction, "
        "builtin:demo-grounded)",
    ]
    # submitting: local paths are read inside the cluster, not here
    assert preflight.check_data(cfg, "submit")[-1].key == "data.grounded[1]"


# --------------------------------------------------------------------------------------- tracking
def test_the_tracking_server_answers_or_the_run_does_not_start(mlflow_server, tmp_path):
    assert preflight.check_tracking(cfg_with(f"tracking.tracking_uri={mlflow_server}"), "local") == []
    dead = "http://127.0.0.1:9"
    (p,) = preflight.check_tracking(cfg_with(f"tracking.tracking_uri={dead}"), "local")
    assert p.key == "tracking.tracking_uri" and p.cause.startswith(f"the MLflow server at {dead} does not answer (")
    # a server that answers but is not MLflow
    with FaultServer() as other:
        url = other.base_url.removesuffix("/v1")
        (p,) = preflight.check_tracking(cfg_with(f"tracking.tracking_uri={url}"), "local")
    assert p.cause == f"{url} answered HTTP 404 to an MLflow API call: is it an MLflow server?"
    # a local store whose folder cannot be created
    (tmp_path / "f").write_text("x")
    (p,) = preflight.check_tracking(cfg_with(f"tracking.tracking_uri=sqlite:///{tmp_path}/f/m.db"), "local")
    assert str(p) == f"tracking.tracking_uri: sqlite:///{tmp_path}/f/m.db: {tmp_path}/f is a file, not a directory"


def test_submit_checks_what_it_can_from_here_and_leaves_cluster_hosts_to_the_first_task(capsys):
    rc = main(
        [
            "submit",
            "--config",
            str(TINY),
            "--host",
            "http://127.0.0.1:9",
            "--set",
            "tracking.tracking_uri=http://127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[0].startswith(
        "preflight: tracking.tracking_uri: the MLflow server at http://127.0.0.1:9 does not answer"
    ), err
    cluster_only = cfg_with(
        "tracking.tracking_uri=http://mlflow.mlflow.svc:5000",
        "judge.judges=[llm-instruction]",
        "judge.llm.base_url=http://vllm.judges.svc:8000/v1",
        "judge.llm.model=m",
        "model.base=/models/on-the-pvc",
    )
    assert preflight.check(cluster_only, where="submit") == []


def test_the_first_task_on_a_cluster_runs_the_checks(tmp_path, monkeypatch):
    """start-run (the first task) refuses to create the parent run when preflight fails there."""
    import mlflow

    from reset import steps

    monkeypatch.delenv(preflight.ENV, raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    config = {"model": {"base": "builtin:no-such-model"}, "tracking": {"tracking_uri": uri, "experiment": "c"}}
    with pytest.raises(preflight.PreflightError, match=r"model\.base: unknown builtin model 'builtin:no-such-model'"):
        steps.start_run(config, "job-c")
    # paths are on the run's volume, which the first task does not mount: left to the steps
    assert (
        preflight.check(
            load_config(TINY, [f"model.base={tmp_path}/on-the-volume", f"data.instruction=[{tmp_path}/v.jsonl]"]),
            where="cluster",
        )
        == []
    )
    try:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.MlflowClient().get_experiment_by_name("c")
        assert exp is None or mlflow.MlflowClient().search_runs([exp.experiment_id]) == []
    finally:
        mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------------------------ judge
def test_the_llm_judge_endpoint_key_and_model(monkeypatch):
    def judge_cfg(url, model="judge"):
        return cfg_with(
            "judge.judges=[llm-instruction, reference]",
            f"judge.llm.base_url={url}",
            f"judge.llm.model={model}",
            "judge.llm.api_key_env=PF_JUDGE_KEY",
        )

    monkeypatch.setenv("PF_JUDGE_KEY", "sk-right")
    with FaultServer(FaultConfig(models=("judge", "other"), api_key="sk-right")) as server:
        assert preflight.check_judge(judge_cfg(server.base_url), "local") == []
        assert lines(preflight.check_judge(judge_cfg(server.base_url, "missing-model"), "local")) == [
            f"judge.llm.model: 'missing-model' is not served by {server.base_url} (it serves: judge, other)"
        ]
        monkeypatch.setenv("PF_JUDGE_KEY", "sk-wrong")
        assert lines(preflight.check_judge(judge_cfg(server.base_url), "local")) == [
            f"judge.llm.base_url: the judge endpoint {server.base_url} refused the key in $PF_JUDGE_KEY (HTTP 401)"
        ]
        assert "sk-wrong" not in json.dumps(lines(preflight.check_judge(judge_cfg(server.base_url), "local")))
        monkeypatch.delenv("PF_JUDGE_KEY")
        # on the cluster the key is mounted on the judge steps only: the first task cannot hold it
        assert preflight.check_judge(judge_cfg(server.base_url), "cluster") == []
    (p,) = preflight.check_judge(judge_cfg("http://127.0.0.1:9/v1"), "local")
    assert p.key == "judge.llm.base_url" and "does not answer" in p.cause
    assert preflight.check_judge(cfg_with(), "local") == []  # no LLM judge configured: nothing to check


# ------------------------------------------------------------------------------------------- disk
def test_disk_space_for_the_checkpoints_the_config_implies(tmp_path, tiny_model_dir):
    """A model whose weights take 4 TB on paper (a sparse file) and full fine-tuning with
    checkpoints: more than any disk here has free."""
    big = tmp_path / "big-model"
    shutil.copytree(tiny_model_dir, big)
    with open(big / "model-00002-of-00002.safetensors", "wb") as fh:
        fh.truncate(4 * 10**12)
    cfg = cfg_with(f"model.base={big}", "train.method=full", "train.checkpoint_every=5")
    out = tmp_path / "runs"
    (p,) = preflight.check(cfg, output_dir=out)
    assert p.key == "--output-dir"
    assert p.cause.startswith("the run needs about ") and "checkpoints + outputs" in p.cause and "free" in p.cause
    need = preflight.estimate(cfg, preflight._Model(weight_bytes=4 * 10**12, config={"torch_dtype": "float32"}))
    assert need["checkpoints"] == 2 * 12 * 10**12 and need["outputs"] >= 4 * 10**12
    lora = preflight.estimate(
        cfg_with(),
        preflight._Model(weight_bytes=2_000_000, config=json.loads((tiny_model_dir / "config.json").read_text())),
    )
    assert lora["checkpoints"] < 10**6  # a LoRA adapter's optimizer state is small
    assert preflight.check(cfg_with(f"model.base={tiny_model_dir}"), output_dir=out) == []


# ---------------------------------------------------------------------------------- all together
class Silent:
    """A server on 127.0.0.1 (a port it binds itself) that reads each request line, records it and
    closes the connection without an answer: an endpoint that does not answer, which counts the
    requests it got."""

    def __init__(self):
        self.requests: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(30)
                self.requests.append(conn.makefile("rb").readline(4096).decode(errors="replace").strip())

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()


def test_every_problem_at_once_each_endpoint_asked_once(tmp_path, no_s3_credentials, capsys):
    """Every problem in one run of preflight, each endpoint that does not answer asked once (no
    retry loop: MLflow's own client would retry a dead tracking server for minutes)."""
    with Silent() as mlflow_endpoint, Silent() as judge_endpoint:
        rc = main(
            [
                "run",
                "--config",
                str(TINY),
                "--output-dir",
                str(tmp_path / "runs"),
                "--set",
                f"model.base={tmp_path}/none",
                "--set",
                f"data.instruction=[{tmp_path}/none.jsonl]",
                "--set",
                "data.grounded=[s3://b/cd.jsonl]",
                "--set",
                f"tracking.tracking_uri={mlflow_endpoint.url}",
                "--set",
                "judge.judges=[llm-faithfulness]",
                "--set",
                f"judge.llm.base_url={judge_endpoint.url}/v1",
                "--set",
                "judge.llm.model=m",
            ]
        )
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    keys = [x.split(": ")[1] for x in err[:-1]]
    assert keys == [
        "tracking.tracking_uri",
        "data.instruction[0]",
        "data.grounded[0]",
        "model.base",
        "judge.llm.base_url",
    ], err
    assert err[-1] == "preflight: 5 problems; nothing was started"
    assert [r.split("?")[0] for r in mlflow_endpoint.requests] == ["GET /api/2.0/mlflow/experiments/get-by-name"]
    assert judge_endpoint.requests == ["GET /v1/models HTTP/1.1"]
    assert not (tmp_path / "runs").exists()
    assert os.environ.get("AWS_ACCESS_KEY_ID") is None  # the fixture's environment held
    assert Path(tmp_path).is_dir()
