"""Faults during whole local runs (kfp.local, the tiny model, data and base model on a moto S3
server), three runs at once on one output folder (one MLflow store, one KFP root, one model cache):

- R (the ReSet pipeline) and E (the experiment pipeline at tiny sizes: the arms MTL and ReSet, the
  control, and IF-only in the trade-off arms' own loop, one seed) run undisturbed: both finish with
  their own parent and step runs intact; E's report compares its arms (IF-only against MTL of the
  same seed, across the two loops), and its MTL and ReSet arms train as R's MTL and ReSet steps do
  (same config, same seed: the same losses);
- F is killed with SIGKILL during fine-tuning (after a checkpoint): its running task stops by
  itself and its step run is KILLED; `runs cleanup` marks F's parent KILLED and nothing of R or
  E, which are still running;
- F is resumed while its S3 endpoint goes away (once the judge step, which reads nothing from S3,
  starts): mix is reused, fine-tuning continues from its checkpoint, and the next step that reads
  S3 fails naming the URI;
- with the endpoint back, F is resumed again: what finished is reused, the rest runs, and its
  results equal R's (within 1%; the fine-tuning loss too).

Every run has a deadline; every process a run started is gone at the end (checked by session)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from reset.data.records import write_jsonl
from reset.data.storage import upload

from .conftest import REPO, wait_for
from .tcp_front import Front
from .test_clean_stops import kill_session, session_processes, wait_gone

pytestmark = pytest.mark.integration

RUN_S = 900  # the deadline of one run on a loaded 2-core machine
MINI = [
    "--set", "data.instruction=[s3://faults/if.jsonl]", "--set", "data.grounded=[s3://faults/cd.jsonl]",
    "--set", "model.base=s3://faults/models/tiny",
    "--set", "generate.grid=[{temperature: 0.0}]", "--set", "generate.samples_per_setting=1",
    "--set", "generate.max_new_tokens=4", "--set", "evaluate.max_new_tokens=4",
    "--set", "train.epochs=4", "--set", "train.checkpoint_every=2",
    "--set", "tracking.experiment=faults", "--set", "register.model_name=reset-faults",
]
MODELS = ("base", "mtl", "reset")
STEPS = {"mix", "finetune-mtl", "generate", "judge", "select", "finetune-reset", "evaluate", "register"}
# the experiment at tiny sizes: two arms, the control and a trade-off arm (its own loop), one seed
EXPERIMENT = ["--set", "experiment.arms=[mtl, reset, control, if-only]", "--set", "experiment.seeds=[0]"]
EXPERIMENT_STEPS = {"mix", "answer", "finetune-mtl", "generate", "judge", "select", "finetune-reset",
                    "finetune-control", "finetune-if-only", "evaluate"}


class Run:
    """One `python -m pipelines run` (or `experiment`) in its own session, output to a file."""

    def __init__(self, name: str, out: Path, logs: Path, endpoint: str, cache: Path, args: list[str],
                 command: str = "run"):
        self.name, self.out = name, out
        self.log = logs / f"{name}.log"
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
               "RESET_CACHE_DIR": str(cache)}
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipelines", command, "--output-dir", str(out), *args],
                                         stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                                         start_new_session=True)
        self.t0 = time.monotonic()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = RUN_S) -> int:
        try:
            return self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} ran past {timeout}s:\n{self.text()[-3000:]}")

    def run_dir(self) -> Path | None:
        for job in self.out.glob("run-*/job.json"):
            try:
                if json.loads(job.read_text())["driver"]["pid"] == str(self.proc.pid):
                    return job.parent
            except (ValueError, KeyError):
                continue
        return None


def parent_of(client, exp_id: str, run_dir: Path):
    job = json.loads((run_dir / "job.json").read_text())["job_id"]
    (parent,) = client.search_runs([exp_id], f"tags.`reset.kfp_job_id` = '{job}'")
    return parent


def steps_of(client, exp_id: str, parent_id: str) -> dict[str, list]:
    """step -> its runs under the parent, oldest first."""
    out: dict[str, list] = {}
    for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                order_by=["attributes.start_time ASC"]):
        out.setdefault(r.data.tags["reset.step"], []).append(r)
    return out


TIMING = re.compile(r"seconds|_s$|per_s|per_second|_time|engine_start")


def close(a: dict[str, float], b: dict[str, float]) -> list[str]:
    """Keys (timings aside) whose values differ by more than 1% (0.001 absolute near 0)."""
    keys = [k for k in sorted(set(a) | set(b)) if not TIMING.search(k)]
    return [k for k in keys if k not in a or k not in b or abs(a[k] - b[k]) > max(1e-3, 0.01 * abs(b[k]))]


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3, s3_endpoint, tiny_model_dir, demo):
    root = tmp_path_factory.mktemp("faults")
    s3.create_bucket(Bucket="faults")
    ifs, cds = demo
    write_jsonl(root / "if.jsonl", ifs[:24])
    write_jsonl(root / "cd.jsonl", cds[:24])
    upload(root / "if.jsonl", "s3://faults/if.jsonl")
    upload(root / "cd.jsonl", "s3://faults/cd.jsonl")
    upload(tiny_model_dir, "s3://faults/models/tiny")
    host, port = s3_endpoint.rsplit("//", 1)[1].split(":")
    f_s3 = Front((host, int(port)))  # F's own endpoint (the same S3), to cut off and bring back
    out, logs, cache = root / "runs", root / "logs", root / "cache"
    logs.mkdir()
    state: dict = {"root": root, "out": out, "f_endpoint": f_s3.url, "sessions": []}
    try:
        yield state, f_s3, logs, cache, s3_endpoint
    finally:
        for sid in state["sessions"]:
            kill_session(sid)
        f_s3.close()


@pytest.fixture(scope="module")
def scenario(world):
    """Runs the whole scenario once; the tests below check what it left."""
    state, f_s3, logs, cache, endpoint = world
    out = state["out"]
    r1 = Run("R", out, logs, endpoint, cache, ["--config", str(REPO / "configs" / "tiny.yaml"), *MINI])
    e = Run("E", out, logs, endpoint, cache, ["--config", str(REPO / "configs" / "tiny.yaml"), *MINI, *EXPERIMENT],
            command="experiment")
    f = Run("F", out, logs, state["f_endpoint"], cache, ["--config", str(REPO / "configs" / "tiny.yaml"), *MINI])
    state["sessions"] += [r1.proc.pid, e.proc.pid, f.proc.pid]

    # 1. SIGKILL F's driver once fine-tuning has written a checkpoint
    f_dir = wait_for("F's run folder", f.run_dir, RUN_S)
    wait_for("a fine-tuning checkpoint of F", lambda: list((f_dir / "checkpoints" / "mtl").glob("step-*")), RUN_S, 0.05)
    os.kill(f.proc.pid, signal.SIGKILL)
    f.proc.wait()
    state["f_left"] = wait_gone(f.proc.pid, 90)
    state["r_running_at_cleanup"] = [r.proc.poll() is None for r in (r1, e)]
    cleanup = subprocess.run([sys.executable, "-m", "pipelines", "runs", "cleanup", "--output-dir", str(out)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    state["cleanup"] = cleanup

    # 2. resume F; its S3 endpoint stops when the judge step starts
    f1 = Run("F-resume-1", out, logs, state["f_endpoint"], cache, ["--resume", f_dir.name])
    state["sessions"].append(f1.proc.pid)
    judge_started = f"  {'judge':<15} ..."
    wait_for("F's judge step", lambda: judge_started in f1.text() or f1.proc.poll() is not None, RUN_S)
    f_s3.cut()
    state["f1_rc"] = f1.wait()
    state["f1_text"] = f1.text()

    # 3. the endpoint is back, at the same address: resume again
    f_s3.restore()
    f2 = Run("F-resume-2", out, logs, state["f_endpoint"], cache, ["--resume", f_dir.name])
    state["sessions"].append(f2.proc.pid)
    state["f2_rc"] = f2.wait()
    state["f2_text"] = f2.text()
    state["r_rc"] = [r1.wait(), e.wait()]
    state["r_text"] = [r1.text(), e.text()]
    state["dirs"] = {"R": r1.run_dir(), "E": e.run_dir(), "F": f_dir}
    state["left"] = {sid: wait_gone(sid, 60) for sid in state["sessions"]}
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    try:
        yield state, client, client.get_experiment_by_name("faults").experiment_id
    finally:
        mlflow.set_tracking_uri(None)


def test_two_runs_at_once_finish_with_their_own_runs_intact(scenario):
    """R and E ran beside each other (and beside F) on one store: each finished with one parent and
    one run per step of its own, all FINISHED."""
    state, client, exp = scenario
    assert state["r_rc"] == [0, 0], state["r_text"][0][-2000:] + state["r_text"][1][-2000:]
    parents = {n: parent_of(client, exp, state["dirs"][n]) for n in ("R", "E")}
    assert parents["R"].info.run_id != parents["E"].info.run_id
    for name, want in (("R", STEPS), ("E", EXPERIMENT_STEPS)):
        p = parents[name]
        assert p.info.status == "FINISHED", name
        steps = steps_of(client, exp, p.info.run_id)
        runs_of = {"evaluate": 2} if name == "E" else {}  # E: the seeds' loop and the trade-off arms' loop
        assert set(steps) == want and all(len(steps[s]) == runs_of.get(s, 1) for s in want), (name, sorted(steps))
        assert all(runs[-1].info.status == "FINISHED" for runs in steps.values()), name


def test_the_experiment_at_tiny_sizes_reports_its_arms_trained_as_the_reset_pipeline_trains_them(scenario, tmp_path):
    state, client, exp = scenario
    e_parent = parent_of(client, exp, state["dirs"]["E"])
    e_steps = steps_of(client, exp, e_parent.info.run_id)
    r_steps = steps_of(client, exp, parent_of(client, exp, state["dirs"]["R"]).info.run_id)
    # each arm trained once (the control from MTL too, on the references of the prompts ReSet kept)
    ft = {s: e_steps[s][-1].data.metrics for s in ("finetune-mtl", "finetune-reset", "finetune-control")}
    assert all(m["steps"] >= 1 for m in ft.values())
    assert e_steps["select"][-1].data.metrics["selected"] == ft["finetune-control"]["examples"]
    # the same config and seed as R: the same MTL and ReSet training
    for step in ("finetune-mtl", "finetune-reset"):
        r = r_steps[step][-1].data.metrics
        assert close({k: ft[step][k] for k in ("first_loss", "final_loss")},
                     {k: r[k] for k in ("first_loss", "final_loss")}) == [], step
    # every arm scored on the held-out split, the report across seeds on the parent run
    # (the two loops run in turn, in the order kfp.local's topological sort gives them)
    seeds_loop, tradeoff_loop = sorted(({k.split(".")[0] for k in r.data.metrics} for r in e_steps["evaluate"]),
                                       key=lambda models: "mtl" not in models)
    assert {"base", "mtl", "reset", "control"} <= seeds_loop and "if-only" not in seeds_loop
    assert {"base", "if-only"} <= tradeoff_loop and "mtl" not in tradeoff_loop  # the trade-off arms' loop
    report = Path(client.download_artifacts(e_parent.info.run_id, "experiment.md", str(tmp_path))).read_text()
    assert "ReSet vs MTL" in report and "MTL+steps (control) vs MTL" in report
    assert "IF-only vs MTL" in report  # paired with MTL of the same seed, from the other loop's evaluation
    assert "The paper's arms (1 seed: 0)" in report
    assert "The paper's arms" in state["r_text"][1]  # and the CLI printed it


def test_sigkill_during_fine_tuning_stops_its_task_and_cleanup_marks_only_that_run(scenario):
    state, client, exp = scenario
    assert state["f_left"] == []  # the fine-tuning task stopped by itself once its driver was gone
    assert state["cleanup"].returncode == 0, state["cleanup"].stderr
    f_parent = parent_of(client, exp, state["dirs"]["F"])
    marked = [x for x in state["cleanup"].stdout.splitlines() if x.startswith("marked KILLED: run ")]
    assert [x.split()[3] for x in marked] == [f_parent.info.run_id], state["cleanup"].stdout
    assert any(state["r_running_at_cleanup"])  # cleanup ran beside live runs and left them alone
    first = steps_of(client, exp, f_parent.info.run_id)["finetune-mtl"][0]
    assert first.info.status == "KILLED"


def test_s3_stopping_mid_run_fails_the_step_naming_the_uri(scenario):
    state, _, _ = scenario
    text = state["f1_text"]
    assert state["f1_rc"] == 1, text[-3000:]
    assert "  mix             reused (finished before)" in text
    failure = next(x for x in text.splitlines() if x.startswith("The pipeline failed in step "))
    assert failure.startswith("The pipeline failed in step finetune-reset: "), failure
    assert "s3://faults/models/tiny" in failure and "S3" in failure
    ft_log = (state["dirs"]["F"] / "logs" / "finetune-mtl.log").read_text()
    assert "[finetune] resuming from " in ft_log  # fine-tuning continued from its checkpoint


def test_resume_completes_and_equals_the_uninterrupted_run(scenario):
    state, client, exp = scenario
    text = state["f2_text"]
    assert state["f2_rc"] == 0, text[-3000:]
    for step in ("mix", "finetune-mtl", "generate", "judge", "select"):
        assert f"  {step:<15} reused (finished before)" in text
    f_parent = parent_of(client, exp, state["dirs"]["F"])
    r_parent = parent_of(client, exp, state["dirs"]["R"])
    assert f_parent.info.status == "FINISHED" and f_parent.data.tags["reset.attempts"] == "3"
    f_steps, r_steps = steps_of(client, exp, f_parent.info.run_id), steps_of(client, exp, r_parent.info.run_id)
    assert [r.info.status for r in f_steps["finetune-mtl"]] == ["KILLED", "FINISHED"]
    assert [r.info.status for r in f_steps["finetune-reset"]] == ["FAILED", "FINISHED"]
    f_ft, r_ft = f_steps["finetune-mtl"][-1].data.metrics, r_steps["finetune-mtl"][-1].data.metrics
    assert f_ft["resumed_from_step"] >= 2 and r_ft["resumed_from_step"] == 0
    assert close({"final_loss": f_ft["final_loss"]}, {"final_loss": r_ft["final_loss"]}) == []
    # base, MTL and ReSet on the held-out set (a run that finds a champion registered also
    # re-scores it: F ends after R registered one)
    f_eval, r_eval = ({k: v for k, v in steps["evaluate"][-1].data.metrics.items() if k.split(".")[0] in MODELS}
                      for steps in (f_steps, r_steps))
    assert {k.split(".")[0] for k in r_eval} == set(MODELS) and close(f_eval, r_eval) == []


def test_nothing_is_left_running(scenario):
    state, client, exp = scenario
    assert all(left == [] for left in state["left"].values()), state["left"]
    for sid in state["sessions"]:
        assert session_processes(sid) == []
    assert client.search_runs([exp], "attributes.status = 'RUNNING'") == []
