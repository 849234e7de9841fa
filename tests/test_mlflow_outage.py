"""The MLflow server goes away in the middle of a step: the step fails with a line that names the
server after the library's bounded retries (MLflow's own client would retry 7 times with a backoff
factor of 2, about four minutes a call), every metric whose logging call returned is in the store,
and the step's run, left RUNNING because the server was gone when the step ended, is marked KILLED
by the cleanup.

The step talks to the server through a TCP front (127.0.0.1, a port the front binds itself) that
forwards every connection until the outage; from then on it drops every connection the step opens
(the established ones too), as a server that stopped would, and records the request each one
carried. The server itself keeps running, so the store is read back from it afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import mlflow
import pytest

from reset import procs, tracking

from .conftest import REPO, mlflow_server_cmd, mlflow_server_env, server_process, uvicorn_url
from .tcp_front import Front

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
        if i == 19:
            sys.stdin.readline()  # the test cuts the server off, then lets the step go on
"""


def test_the_mlflow_server_goes_away_mid_step(tmp_path):
    env = mlflow_server_env()
    for key in tracking.HTTP_RETRY_DEFAULTS:
        env.pop(key, None)  # the library's own bound, not one a test set
    step_env = {**env, "RESET_PROGRESS": "1", procs.DRIVER_ENV: json.dumps(procs.identity())}
    cmd = mlflow_server_cmd(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    logged: list[int] = []
    with server_process(cmd, uvicorn_url, tmp_path / "server.log", env, 90, "mlflow server") as server:
        host, port = server.url.rsplit("//", 1)[1].split(":")
        front = Front((host, int(port)))
        step = subprocess.Popen([sys.executable, "-c", STEP, front.url], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=step_env)
        lines: list[str] = []
        try:
            for line in step.stdout:
                lines.append(line)
                if line.startswith("logged "):
                    logged.append(int(line.split()[1]))
                    if len(logged) == 20:
                        break
            assert len(logged) == 20, "".join(lines)
            front.cut()  # the server is gone, as the step sees it
            step.stdin.write("go\n")
            step.stdin.flush()
            for line in step.stdout:
                lines.append(line)
                if line.startswith("logged "):
                    logged.append(int(line.split()[1]))
            rc = step.wait(timeout=600)  # guards against a hang only
        finally:
            if step.poll() is None:
                step.kill()
                step.wait()
            front.close()
        out = "".join(lines)
        assert rc != 0
        fail = [json.loads(x.split("##reset ", 1)[1]) for x in lines if x.startswith("##reset ") and '"fail"' in x]
        assert fail and fail[0]["error"].startswith(f"the MLflow tracking server at {front.url} did not answer"), \
            out[-3000:]
        # the retries are the library's bound: each call gave up after 1 + 4 connections at most (MLflow's
        # default would be 8 a call); the log-metric call that failed did retry
        per_call = Counter(line.split()[1].split("?")[0] for line in front.dropped if line)
        print(f"connections dropped after the cut, per call: {dict(per_call)}")
        assert per_call and max(per_call.values()) <= 1 + 4, per_call  # reset.tracking.HTTP_RETRY_DEFAULTS
        assert per_call["/api/2.0/mlflow/runs/log-metric"] >= 2, per_call
        assert logged[-1] == 19  # no call returned after the cut

        # the store, read back from the server itself
        mlflow.set_tracking_uri(server.url)
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
            marked = tracking.mark_dead_runs(server.url, ["outage"])
            assert [m["run_id"] for m in marked] == [run.info.run_id]
            assert client.get_run(run.info.run_id).info.status == "KILLED"
        finally:
            mlflow.set_tracking_uri(None)
