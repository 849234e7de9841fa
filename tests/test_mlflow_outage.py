"""The MLflow server stops in the middle of a step: the step fails within seconds with a line
that names the server (MLflow's own client would retry for about four minutes), every metric
whose logging call returned is in the store once the server is back, and the step's run, left
RUNNING because the server was gone when the step ended, is marked KILLED by the cleanup."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from reset import procs, tracking

from .conftest import REPO, free_port, server_process

pytestmark = pytest.mark.integration

STEP = """
import sys, time
import mlflow
from reset import tracking
from reset.config import TrackingConfig

cfg = TrackingConfig(tracking_uri=sys.argv[1], experiment="outage")
parent = tracking.start_parent(cfg, {}, {tracking.JOB_TAG: "job-outage"})
print("parent", parent, flush=True)
with tracking.step_run(cfg, "train", parent_run_id=parent):
    for i in range(100000):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
        print(f"logged {i}", flush=True)
        time.sleep(0.02)
"""


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_mlflow_server_stops_mid_step(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    cmd = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in tracking.HTTP_RETRY_DEFAULTS:
        env.pop(key, None)  # the library's own bound, not one a test set
    step_env = {**env, "RESET_PROGRESS": "1", procs.DRIVER_ENV: json.dumps(procs.identity())}
    logged: list[int] = []
    with server_process(cmd, url + "/health", tmp_path / "server-1.log", env, 90, "mlflow server") as server:
        step = subprocess.Popen([sys.executable, "-c", STEP, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=REPO, env=step_env)
        try:
            lines = []
            for line in step.stdout:
                lines.append(line)
                if line.startswith("logged "):
                    logged.append(int(line.split()[1]))
                    if len(logged) == 20:
                        break
            assert len(logged) == 20, "".join(lines)
            server.terminate()  # the server goes away mid-step
            server.wait(timeout=30)
            t0 = time.monotonic()
            for line in step.stdout:
                lines.append(line)
                if line.startswith("logged "):
                    logged.append(int(line.split()[1]))
            rc = step.wait(timeout=120)
            took = time.monotonic() - t0
        finally:
            if step.poll() is None:
                step.kill()
                step.wait()
    out = "".join(lines)
    assert rc != 0
    assert took < 60, took  # MLflow's defaults would retry for about four minutes
    fail = [json.loads(x.split("##reset ", 1)[1]) for x in lines if x.startswith("##reset ") and '"fail"' in x]
    assert fail and fail[0]["error"].startswith(f"the MLflow tracking server at {url} did not answer"), out[-3000:]

    deadline = time.monotonic() + 30
    while not port_closed(port) and time.monotonic() < deadline:
        time.sleep(0.2)  # the old server's worker lets go of the port
    with server_process(cmd, url + "/health", tmp_path / "server-2.log", env, 90, "mlflow server"):
        mlflow.set_tracking_uri(url)
        try:
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name("outage")
            (run,) = client.search_runs([exp.experiment_id], "tags.`reset.step` = 'train'")
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
            missing = sorted(set(logged) - set(history))
            assert missing == [], f"reported as logged but missing: {missing}"
            assert all(history[i] == pytest.approx(1.0 / (i + 1)) for i in logged)
            # the step's run could not be closed while the server was gone; its process is gone now
            assert run.info.status == "RUNNING"
            marked = tracking.mark_dead_runs(url, ["outage"])
            assert [m["run_id"] for m in marked] == [run.info.run_id]
            assert client.get_run(run.info.run_id).info.status == "KILLED"
        finally:
            mlflow.set_tracking_uri(None)
