"""A local run's driver killed outright (`kill -9`): its task processes stop by themselves (even
when they were started with SIGINT ignored, as a shell's background job starts them), the vLLM
worker exits mid-request, and a resumed run first ends what the killed attempt left running.
(The whole CLI killed during a generate shard and resumed: tests/test_shards.py.)

Every wait is on a condition, bounded by a hang guard; the measured times are printed (-s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines import local_runs
from reset import procs

from .conftest import REPO, wait_for
from .test_generation import _vllm_python

HANG_GUARD_S = 60.0


def _ignore_sigint() -> None:  # what `cmd &` in a non-interactive shell does to the job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


TASK = """
import sys, time
from reset import procs
assert procs.watch_driver()
try:
    print("watching", flush=True)   # inside the try: the interrupt may come as soon as the test reads this
    while True:
        time.sleep(0.05)   # a step at work
except KeyboardInterrupt:
    print("interrupted", flush=True)   # where a step closes its MLflow run as KILLED
"""


def test_a_task_started_with_sigint_ignored_still_stops_when_its_driver_is_killed(tmp_path):
    driver = subprocess.Popen(["sleep", "300"])
    env = {**os.environ, procs.DRIVER_ENV: json.dumps(procs.identity(driver.pid)), "PYTHONPATH": str(REPO)}
    task = subprocess.Popen([sys.executable, "-c", TASK], env=env, stdout=subprocess.PIPE, text=True,
                            preexec_fn=_ignore_sigint)
    try:
        assert task.stdout.readline().strip() == "watching"
        driver.kill()
        driver.wait()
        t0 = time.monotonic()
        out = wait_for("the task to stop", lambda: task.poll() is not None, HANG_GUARD_S, poll=0.02)
        print(f"\n[measured] the task stopped {time.monotonic() - t0:.2f}s after its driver was killed")
        assert out and task.returncode == 0
        assert "interrupted" in task.stdout.read()  # by KeyboardInterrupt, as Ctrl-C would: its run is closed
    finally:
        for p in (driver, task):
            p.kill()
            p.wait()


def test_a_resumed_run_ends_what_its_killed_driver_left_running(tmp_path):
    gone = subprocess.Popen(["sleep", "300"])
    ident = procs.identity(gone.pid)
    gone.kill()
    gone.wait()
    env = {**os.environ, procs.DRIVER_ENV: json.dumps(ident)}
    # a task that ignores SIGINT and outlives its driver (what a watchdog-less process would do)
    leftover = subprocess.Popen(["sleep", "300"], env=env, preexec_fn=_ignore_sigint)
    other = subprocess.Popen(["sleep", "300"])  # not the run's: left alone
    try:
        run = local_runs.LocalRun(tmp_path, "job", resumed=True, previous_driver=ident)
        assert procs.with_identity_in_env(procs.DRIVER_ENV, ident) == [leftover.pid]
        assert local_runs.stop_leftovers(run, wait_s=0.5) == [leftover.pid]
        assert procs.running([leftover.pid]) == []  # killed (and reaped: it was our child)
        assert other.poll() is None
    finally:
        for p in (leftover, other):
            p.kill()
            p.wait()


DRIVER = """
import json, sys
from pathlib import Path
from reset.config import GenerateConfig
from reset.models.generation import vllm_server
a = json.loads(sys.argv[1])
server = vllm_server.EngineServer.start(a["python"], Path(a["folder"]), vllm_server.worker_env(
    GenerateConfig(vllm_kv_cache_gb=1)), keep_s=600)
print(json.dumps({"worker": server.proc.pid}), flush=True)
for line in vllm_server.ask(server.socket, {"request": a["request"], "out": a["out"]}, connect_s=300, stall_s=900):
    print(line, flush=True)
"""


@pytest.mark.integration
def test_the_vllm_worker_exits_mid_request_when_the_driver_is_killed(vllm_tiny_dir, tmp_path):
    """The run's engine server (the local driver's child) busy with a request that would take
    minutes: killed outright, the driver takes the worker with it."""
    from reset.config import GenerateConfig, ModelConfig
    from reset.models.generation.vllm_backend import engine_args, engine_key

    long = {"n": 4, "temperature": 1.0, "max_tokens": 900, "seed": 1, "ignore_eos": True}
    short = {**long, "n": 1, "max_tokens": 2}
    reqs = [{"id": "a", "prompt_token_ids": [5, 6, 7], "chunk": "first", "params": short}]
    reqs += [{"id": f"b{i}", "prompt_token_ids": [5 + i, 6, 7], "chunk": "long", "params": long} for i in range(64)]
    request = {"model": str(vllm_tiny_dir), "engine_key": engine_key(vllm_tiny_dir), "requests": reqs,
               "engine": engine_args(GenerateConfig(max_new_tokens=900), ModelConfig(max_prompt_length=64), False),
               "chunk_files": {"first": str(tmp_path / "first.jsonl"), "long": str(tmp_path / "long.jsonl")}}
    (tmp_path / "request.json").write_text(json.dumps(request))
    args = {"python": _vllm_python(), "folder": str(tmp_path / "vllm"), "request": str(tmp_path / "request.json"),
            "out": str(tmp_path / "out.jsonl")}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(args)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    worker = json.loads(driver.stdout.readline())["worker"]
    try:
        # the first chunk is written: the worker is in the long one (minutes of sampling)
        wait_for("the first chunk", (tmp_path / "first.jsonl").exists, 300, poll=0.05)
        driver.kill()
        driver.wait()
        t0 = time.monotonic()
        wait_for("the worker to exit", lambda: not procs.running([worker]), HANG_GUARD_S, poll=0.02)
        print(f"\n[measured] the vLLM worker exited {time.monotonic() - t0:.2f}s after its driver was killed")
        assert not (tmp_path / "long.jsonl").exists()  # mid-request
        assert "is gone: exiting" in (tmp_path / "vllm" / "engine.log").read_text()
    finally:
        driver.kill()
        driver.wait()
        if procs.running([worker]):
            os.killpg(worker, signal.SIGKILL)
