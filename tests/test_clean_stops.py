"""Clean stops and crash safety: Ctrl-C ends a local run with one line, exit 130 and its MLflow
runs KILLED; runs of local processes that died are marked KILLED (and only those); a resumed run
reopens its parent run; a bad --set or output path is one line; no secret in a URL gets through."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from pipelines.cli import main
from reset import procs, tracking
from reset.config import ConfigError, TrackingConfig, load_config, url_secret

from .conftest import REPO

TINY = REPO / "configs" / "tiny.yaml"


def session_processes(sid: int) -> list[int]:
    """Processes of session `sid` still running (a run started with start_new_session=True)."""
    out = []
    for p in Path("/proc").glob("[0-9]*"):
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(p.name))
    return out


def wait_gone(sid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling process exit with a deadline
    return left


def kill_session(sid: int) -> None:
    for pid in session_processes(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def runs_of(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("select name, status from runs order by start_time").fetchall()


# ------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_stops_the_run_with_one_line_exit_130_and_marks_the_runs_killed(tmp_path):
    """SIGINT to the run's process group, as a terminal sends it, while the first step's MLflow
    run is open: exit 130, no traceback, one line after the step lines, the parent and the step's
    run KILLED, nothing of the run left running."""
    out = tmp_path / "runs"
    env = {**os.environ, "RESET_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "run", "--config", str(TINY), "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                            start_new_session=True)
    db = out / "mlflow.db"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    if ("mix", "RUNNING") in runs_of(db):
                        break
                except sqlite3.Error:
                    pass
            time.sleep(0.2)  # polling the store for the step's run, with a deadline
        else:
            pytest.fail(f"the mix step's run never appeared: {proc.poll()=}")
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        left = wait_gone(proc.pid, 30)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    err = stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[reset-kfp] stopped in step mix: "), stderr
    assert "resume with: python -m pipelines run --resume run-" in err[0]
    assert stdout.splitlines()[0].startswith("ReSet pipeline, locally")
    assert left == []
    status = dict(runs_of(db))
    assert status["mix"] == "KILLED"
    assert [s for name, s in runs_of(db) if name != "mix"] == ["KILLED"]  # the parent


# -------------------------------------------------------------------------------- dead local runs
def _dead_identity() -> dict[str, str]:
    p = subprocess.Popen(["sleep", "30"])
    ident = procs.identity(p.pid)
    p.kill()
    p.wait()
    return ident


def test_runs_of_dead_local_processes_are_marked_killed_and_only_those(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = TrackingConfig(tracking_uri=uri, experiment="cleanup")
    exp = tracking.experiment_id(cfg)
    client = mlflow.MlflowClient()
    dead, live = _dead_identity(), procs.identity()
    reused = {**procs.identity(), "start": "1"}  # our pid, but another process's start time: a reused pid
    other_host = {**dead, "host": "some-other-host"}

    def make(name, ident=None, parent=None):
        tags = tracking.local_tags(ident)
        if parent:
            tags["mlflow.parentRunId"] = parent
        return client.create_run(exp, run_name=name, tags=tags).info.run_id

    dead_parent = make("dead-parent", dead)
    dead_step = make("dead-step", dead, dead_parent)
    nested = make("nested-eval", None, dead_step)  # a nested run carries no tags of its own
    live_parent = make("live-parent", live)
    live_nested = make("live-nested", None, live_parent)
    reused_pid = make("reused-pid", reused)
    elsewhere = make("other-host", other_host)
    cluster = make("cluster-run")
    try:
        rc = main(["runs", "cleanup", "--tracking-uri", uri])
        assert rc == 0
        status = {r.info.run_name: r.info.status for r in client.search_runs([exp])}
    finally:
        mlflow.set_tracking_uri(None)
    assert status == {"dead-parent": "KILLED", "dead-step": "KILLED", "nested-eval": "KILLED",
                      "reused-pid": "KILLED", "live-parent": "RUNNING", "live-nested": "RUNNING",
                      "other-host": "RUNNING", "cluster-run": "RUNNING"}
    del dead_step, nested, live_nested, reused_pid, elsewhere, cluster, dead_parent


def test_liveness_by_pid_start_time_and_boot(tmp_path):
    me = procs.identity()
    assert procs.alive(me) is True
    assert procs.alive({**me, "start": str(int(me["start"]) + 1)}) is False  # same pid, another process
    assert procs.alive({**me, "boot": "another-boot"}) is False
    assert procs.alive({**me, "host": "elsewhere"}) is None
    assert procs.alive(_dead_identity()) is False
    assert procs.alive({}) is None


def test_a_task_stops_when_its_driver_dies_and_not_before(tmp_path):
    """The watchdog of a task process: while its driver lives, the task goes on through the
    watchdog's checks (it reports three, each finding the driver alive); once the driver is killed
    with SIGKILL, the task gets Ctrl-C (KeyboardInterrupt in its main thread) and ends."""
    driver = subprocess.Popen(["sleep", "600"])
    code = ("import sys, threading\n"
            "from reset import procs\n"
            "real, checks, three = procs.alive, [], threading.Event()\n"
            "def counting(ident):\n"
            "    found = real(ident)\n"
            "    checks.append(found)\n"
            "    if len(checks) == 3:\n"
            "        three.set()\n"
            "    return found\n"
            "procs.alive = counting  # the watchdog's liveness checks, counted (each still the real one)\n"
            "assert procs.watch_driver(interval_s=0.05)\n"
            "try:\n"
            "    three.wait()\n"
            "    print('checked', checks[:3], flush=True)\n"
            "    threading.Event().wait()  # until interrupted\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n"
            "    sys.exit(3)\n")
    env = {**os.environ, procs.DRIVER_ENV: json.dumps(procs.identity(driver.pid))}
    task = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        # the driver lives: three checks found it alive and the task is still there to say so
        assert task.stdout.readline().strip() == "checked [True, True, True]"
        assert task.poll() is None
        driver.kill()
        driver.wait()
        assert task.wait(timeout=120) == 3  # guards against a hang only
        assert "interrupted" in task.stdout.read()
    finally:
        for p in (driver, task):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_resumed_job_reopens_its_parent_run(tmp_path):
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="resume")
    try:
        first = tracking.start_parent(cfg, {"train": {"epochs": 1}}, {tracking.JOB_TAG: "job-r"})
        with tracking.step_run(cfg, "mix", parent_run_id=first):
            pass
        assert tracking.kill_job_runs(cfg, "job-r") == [first]
        again = tracking.start_parent(cfg, {"train": {"epochs": 1}, "judge": {"budget_usd": 5}},
                                      {tracking.JOB_TAG: "job-r"})
        client = mlflow.MlflowClient()
        run = client.get_run(again)
        assert again == first and run.info.status == "RUNNING"
        assert run.data.tags[tracking.ATTEMPTS_TAG] == "2"
        assert run.data.params["judge.budget_usd"] == "5"  # new keys are logged; params never change
        assert "config-attempt-2.json" in [a.path for a in client.list_artifacts(again)]
        assert len(client.search_runs([run.info.experiment_id], "tags.`reset.role` = 'pipeline'")) == 1
    finally:
        mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------------- bad command lines
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.epochs.x=1",
            "error: --set 'train.epochs.x=1': train.epochs is a value, not a section (set train.epochs=... instead)",
        ),
        ("train.epochs", "error: --set 'train.epochs': expected section.key=value"),
        ("=3", "error: --set '=3': '' is not a key path like train.epochs"),
        (
            "data.instruction=[unclosed",
            "error: --set 'data.instruction=[unclosed': the value is not valid YAML: while parsing a flow sequence",
        ),
        (
            "train.epochs=!!python/object/apply:os.system [echo]",
            "error: --set 'train.epochs=!!python/object/apply:os.system "
            "[echo]': the value is not valid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
    ],
)
def test_a_malformed_set_is_one_line_and_exit_2(override, message, tmp_path, capsys):
    rc = main(["run", "--config", str(TINY), "--output-dir", str(tmp_path / "runs"), "--set", override])
    assert rc == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not (tmp_path / "runs").exists()


def test_an_output_path_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("")
    assert main(["run", "--config", str(TINY), "--output-dir", str(f)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"preflight: --output-dir: {f} is a file, not a directory"]
    assert main(["run", "--resume", "run-none", "--output-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("error: --resume run-none: no run folder with job.json")


# --------------------------------------------------------------------------------- secrets in URLs
@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@mlflow:5000",
        "https://mlflow.example.com/?token=abc",
        "http://h/?access_token=abc",
        "http://h/v1?api_key=abc",
        "http://h/v1?apikey=abc",
        "http://h/v1?api-key=abc",
        "http://h/v1?key=abc",
        "https://bucket.s3.amazonaws.com/o?X-Amz-Signature=abc&X-Amz-Credential=x",
        "http://h/?sig=abc",
        "http://h/?a=1&client_secret=abc",
        "http://h/?password=abc",
        "http://h/?Token=abc",
        "http://h/?auth=abc",
        "http://h/#access_token=abc",
        "http://h/?x-api-key=abc",
        "http://h/?api%5Fkey=abc",
        "http://h/?private_token=abc",
    ],
)
def test_a_secret_anywhere_in_a_url_is_found(url):
    assert url_secret(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://mlflow:5000",
        "http://h/v1?model=x&timeout=3",
        "https://h/path/token/x",
        "http://h/?monkey=1",
        "sqlite:////tmp/mlflow.db",
        "http://h/?keys_only=1",
    ],
)
def test_urls_without_secrets_pass(url):
    assert url_secret(url) == ""


@pytest.mark.parametrize("key", ["tracking.tracking_uri", "judge.llm.base_url"])
def test_a_secret_url_is_refused_naming_the_key_and_never_compiled_or_printed(key, tmp_path, capsys):
    secret = "s3cr3t-VALUE-42"
    out = tmp_path / "p.yaml"
    rc = main(
        ["compile", "--config", str(TINY), "--output", str(out), "--set", f"{key}=http://h:1/v1?api_key={secret}"]
    )
    text = capsys.readouterr()
    assert rc == 2 and not out.exists()
    assert key in text.err and secret not in text.err + text.out
    with pytest.raises(ConfigError) as exc:
        load_config(TINY, [f"{key}=http://h:1/?token={secret}"])
    assert secret not in str(exc.value) and key in str(exc.value)


# ------------------------------------------------------------------------------ the failure's line
def test_a_task_that_fails_before_its_step_begins_is_named_with_its_reason(tmp_path):
    """start-run fails (say, preflight on a cluster): no step event was printed, so the report
    names the task from kfp.local's message and takes the reason from the task's log."""
    import io

    from pipelines.console import Console

    console = Console(io.StringIO(), tmp_path / "logs")
    for line in [
        "Executing task 'start-run'",
        "    Traceback (most recent call last):",
        '      File "x", line 1',
        "    reset.preflight.PreflightError: model.base: /m: no such directory",
        "    judge.llm.base_url: the judge endpoint http://j/v1 does not answer (Connection refused)",
        "Executing task 'finish-run'",
        "    [mlflow] no parent run for job 1",
    ]:
        console.write(line + "\n")
    kfp_error = (
        "Pipeline \x1b[95m'reset'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. Inner task failed: "
        "\x1b[96m'start-run'\x1b[0m inside \x1b[96m'exit-handler-1'\x1b[0m."
    )
    report = console.failure_report(kfp_error)
    reason = "reset.preflight.PreflightError: model.base: /m: no such directory"
    assert report[0] == f"The pipeline failed in step start-run: {reason}"
    assert console.failure == ("start-run", reason)
    assert report[1].endswith(f"{tmp_path / 'logs' / 'start-run.log'} ---")


def test_a_run_that_is_still_running_is_not_resumed_beside_itself(tmp_path, capsys):
    from pipelines import local_runs

    run_dir = tmp_path / "runs" / "run-20250101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / local_runs.CONFIG_FILE).write_text(json.dumps({"model": {"base": "builtin:tiny-llama"}}))
    job = {"job_id": "j", "driver": procs.identity()}  # this very process: alive
    (run_dir / local_runs.JOB_FILE).write_text(json.dumps(job))
    assert main(["run", "--resume", run_dir.name, "--output-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {run_dir.name}: that run is still running (pid "
        f"{os.getpid()}); stop it first (Ctrl-C, or kill its pid)"
    )


def test_sigterm_stops_a_run_like_ctrl_c_with_exit_code_143():
    """What run_local wraps the pipeline in: SIGTERM raises as Ctrl-C does, and the exit code
    says which signal it was."""
    code = (
        "import os, signal, sys, time\n"
        "from pipelines import local_runs\n"
        "try:\n"
        "    with local_runs.stop_signals():\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "except KeyboardInterrupt as exc:\n"
        "    sys.exit(local_runs.exit_code(exc))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
