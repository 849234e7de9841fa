"""Sharded generate / judge / evaluate (cluster.shards): the pieces, gathered, are the unsharded
step's output; the sharded DAG compiles with ParallelFor + Collected and runs under kfp.local."""

from __future__ import annotations

import json
import os

import pytest

from pipelines import local_runs
from reset import steps
from reset.data.records import Candidate, Judgment, read_jsonl, write_jsonl
from reset.data.shards import bounds, ordered

from .test_generation import _vllm_python, examples  # noqa: F401  (a fixture)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_bounds_cover_every_item_once_in_order(n, shards):
    pieces = [bounds(n, k, shards) for k in range(shards)]
    assert [i for lo, hi in pieces for i in range(lo, hi)] == list(range(n))
    sizes = [hi - lo for lo, hi in pieces]
    assert max(sizes) - min(sizes) <= 1


def test_bad_shard_numbers_and_a_shard_gathered_twice_are_errors():
    with pytest.raises(ValueError, match="shards must be at least 1"):
        bounds(4, 0, 0)
    with pytest.raises(ValueError, match="shard 3 is not in 0..2"):
        bounds(4, 3, 3)
    with pytest.raises(ValueError, match="more than one shard"):
        ordered(["a1", "a1"], ["a"], lambda r: r[0], lambda r: r)
    with pytest.raises(ValueError, match="not in the prompt set"):
        ordered(["b1"], ["a"], lambda r: r[0], lambda r: r)


def _tracking(tmp_path):
    return {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "shards"}


@pytest.fixture()
def run_engine(vllm_tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    """The vLLM worker a local run starts (`python -m pipelines run`), for the steps below: they
    all use the tiny model, so one engine serves them all."""
    from reset.config import PipelineConfig

    gen = {"grid": [{"temperature": 0.0}, {"temperature": 1.0, "top_p": 0.95}], "samples_per_setting": 2,
           "max_new_tokens": 8, "backend": "vllm", "vllm_python": _vllm_python(), "vllm_kv_cache_gb": 1,
           "vllm_engine_keep_s": 120}
    server = local_runs.local_engine_server(PipelineConfig.model_validate(
        {"model": {"base": str(vllm_tiny_dir)}, "generate": gen, "evaluate": {"max_new_tokens": 8}}), tmp_path / "vllm")
    assert server is not None
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    try:
        yield gen, server
    finally:
        server.stop()


@pytest.mark.integration
def test_sharded_generate_judge_and_evaluate_equal_the_unsharded_steps(vllm_tiny_dir, examples, tmp_path,  # noqa: F811
                                                                        run_engine):
    import mlflow

    seen = tmp_path / "seen.jsonl"
    write_jsonl(seen, examples)
    gen, server = run_engine
    model = {"base": str(vllm_tiny_dir), "max_prompt_length": 96}
    trk = _tracking(tmp_path)
    judge = {"judges": ["rules", "k-precision", "reference"]}

    cfg = steps.config(generate=gen, model=model, tracking=trk, judge=judge,
                       evaluate={"max_new_tokens": 8, "backend": "vllm"})
    steps.generate(str(vllm_tiny_dir), str(seen), cfg, out_candidates=str(tmp_path / "c.jsonl"))
    steps.judge(str(seen), str(tmp_path / "c.jsonl"), cfg, out_judgments=str(tmp_path / "j.jsonl"))
    parts = []
    for k in range(2):  # 12 prompts: shard 2 starts at position 6, so its seeds are not shard 1's
        c, j = tmp_path / f"c{k}.jsonl", tmp_path / f"j{k}.jsonl"
        steps.generate(str(vllm_tiny_dir), str(seen), cfg, out_candidates=str(c), shard=k, shards=2)
        steps.judge(str(seen), str(c), cfg, out_judgments=str(j), shard=k, shards=2)
        parts.append((str(c), str(j)))
    # gathered in reverse: the order the shards finish in does not matter
    steps.gather(str(seen), [c for c, _ in parts[::-1]], [j for _, j in parts[::-1]],
                 out_candidates=str(tmp_path / "gc.jsonl"), out_judgments=str(tmp_path / "gj.jsonl"))

    def cands(p):
        return [(c.id, c.text, c.decoding["seed"]) for c in read_jsonl(p, Candidate)[0]]

    whole, gathered = cands(tmp_path / "c.jsonl"), cands(tmp_path / "gc.jsonl")
    assert len(whole) == len(examples) * 3 and gathered == whole
    assert len({t for _, t, _ in whole}) > len(examples)  # really sampled: not all alike
    judged = [(j.candidate_id, j.scores, j.combined, j.details) for j in read_jsonl(tmp_path / "j.jsonl", Judgment)[0]]
    assert [
        (j.candidate_id, j.scores, j.combined, j.details) for j in read_jsonl(tmp_path / "gj.jsonl", Judgment)[0]
    ] == judged
    runs = mlflow.MlflowClient(trk["tracking_uri"]).search_runs(
        [mlflow.MlflowClient(trk["tracking_uri"]).get_experiment_by_name("shards").experiment_id]
    )
    assert {r.info.run_name for r in runs} >= {"generate", "generate-1of2", "generate-2of2", "judge-2of2"}

    # evaluation: base + two "arms" answered in two shards, then the statistics over the gathered rows
    heldout = tmp_path / "heldout.jsonl"
    write_jsonl(heldout, examples)
    arms = {"mtl": str(vllm_tiny_dir), "reset": str(vllm_tiny_dir)}

    def outs(tag):
        return {k: str(tmp_path / f"{tag}-{k}") for k in ("out_metrics", "out_report", "out_rows", "out_html")}

    one = steps.evaluate(arms, str(heldout), cfg, **outs("one"))
    rows = []
    for k in range(2):
        rows.append(str(tmp_path / f"rows{k}.jsonl"))
        steps.evaluate_answers(arms, str(heldout), cfg, out_rows=rows[-1], shard=k, shards=2)
    two = steps.evaluate(arms, str(heldout), cfg, rows_paths=rows, **outs("two"))
    assert two["metrics"] == one["metrics"] and two["verdicts"] == one["verdicts"]
    assert set(one["metrics"]) == {"base", "mtl", "reset"}
    assert json.loads((tmp_path / "two-out_metrics").read_text())["metrics"] == one["metrics"]
    with pytest.raises(ValueError, match="rows per model"):  # a lost shard is an error, not a smaller set
        steps.evaluate(arms, str(heldout), cfg, rows_paths=rows[:1], **outs("lost"))
    assert server.log_path.read_text().count("(engine reused)") >= 5  # one engine served every step


def test_the_sharded_dag_fans_out_and_gathers_in_the_compiled_pipeline(tmp_path):
    import yaml

    from pipelines import definitions
    from reset.config import load_config

    from .conftest import REPO

    cfg = load_config(REPO / "configs" / "demo.yaml", ["cluster.shards=3"])
    path = tmp_path / "sharded.yaml"
    definitions.compile_to(cfg, definitions.TRAINING, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    by_name = {t["taskInfo"]["name"]: t for t in inner.values()}
    loops = {n: t for n, t in by_name.items() if "parameterIterator" in t}
    assert set(loops) == {"generate-shards", "answer-shards"}
    assert all(t["parameterIterator"]["items"]["raw"] == "[0, 1, 2]" for t in loops.values())
    body = {n: sorted(spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]) for n, t in loops.items()}
    # the same components as the unsharded DAG: a shard is a parameter, not a twin component
    assert body == {"generate-shards": ["generate-candidates", "judge-candidates"], "answer-shards": ["answer-heldout"]}
    # gather after the generate shards, select after gather; evaluate after the answer shards
    key = {t["taskInfo"]["name"]: k for k, t in inner.items()}
    assert key["generate-shards"] in by_name["gather"]["dependentTasks"]
    assert key["gather"] in by_name["select"]["dependentTasks"]
    assert key["answer-shards"] in by_name["evaluate"]["dependentTasks"]
    gather_inputs = by_name["gather"]["inputs"]["artifacts"]
    assert {
        gather_inputs[k]["taskOutputArtifact"]["producerTask"] for k in ("shard_candidates", "shard_judgments")
    } == {key["generate-shards"]}
    # an answer shard runs with the evaluate step's resources (GPUs, memory) and volume
    executors = spec["deploymentSpec"]["executors"]
    assert (
        executors["exec-answer-heldout"]["container"]["resources"]
        == executors["exec-evaluate-models"]["container"]["resources"]
    )
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert (
        [m["mountPath"] for m in k8s["exec-answer-heldout"]["pvcMount"]]
        == [m["mountPath"] for m in k8s["exec-evaluate-models"]["pvcMount"]]
        == [cfg.cluster.storage.mount_path]
    )


@pytest.mark.integration
def test_the_sharded_pipeline_with_llm_judges_and_two_rounds_runs_under_kfp_local_and_resumes_a_killed_shard(
        tmp_path, tiny_model_dir, monkeypatch):
    """cluster.shards=2 and select.rounds=2 on the tiny config, judged by LLM judges + the reference
    task score over an OpenAI-compatible endpoint that fails a share of requests: the ParallelFor +
    Collected DAG, both rounds unrolled, runs through kfp.local to the end; every shard is its own
    MLflow run, both rounds and the pick on dev are visible; the gathered evaluation covers the
    held-out set; the judge shards account their requests and retries; the API key, which comes
    from the environment, appears in no parameter.

    The driver (started as a shell's background job, SIGINT ignored) is killed with SIGKILL while
    the first generate shard is halfway (its tasks held there with SIGSTOP while the driver is
    killed, then let go): each task stops by itself (the time is printed) and its
    step run is KILLED; `run --resume` continues that shard after its finished chunks (its log
    counts them) and the shard writes exactly what an uninterrupted generation writes. (One run for
    all of it: each costs minutes.)"""
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    from pipelines.cli import main
    from reset import procs
    from reset.config import load_config

    from .conftest import REPO, wait_for
    from .fault_server import FaultConfig, FaultServer

    key = "sk-test-not-a-real-key-42"
    out = tmp_path / "runs"
    monkeypatch.setenv("RESET_CACHE_DIR", str(tiny_model_dir.parent.parent))
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FaultServer(FaultConfig(fail_rate=0.2, fail_kinds=("429", "500"), seed=3)) as server:
        llm = json.dumps(
            {
                "base_url": server.base_url,
                "model": "judge",
                "concurrency": 8,
                "backoff_base_s": 0.01,
                "cache_path": str(tmp_path / "judge.sqlite"),
            }
        )
        sets = ["cluster.shards=2", "select.rounds=2", "tracking.experiment=sharded",
                "judge.judges=[llm-instruction, llm-faithfulness, reference]", f"judge.llm={llm}",
                "generate.chunk_prompts=1", "generate.max_new_tokens=24"]  # 4 chunks a shard
        args = ["run", "--config", str(REPO / "configs" / "tiny.yaml"), "--output-dir", str(out)]
        for x in sets:
            args += ["--set", x]
        with open(tmp_path / "killed.log", "w") as log:
            driver = subprocess.Popen([sys.executable, "-m", "pipelines", *args], cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            shard_chunks = lambda: sorted(out.glob("run-*/resume/generate-1of2/*/*.jsonl"))  # noqa: E731
            wait_for("a finished chunk of the first generate shard", lambda: shard_chunks()
                     or driver.poll() is not None, 900, poll=0.02)
            tasks = procs.descendants(driver.pid)
            for pid in tasks:  # held where they are (halfway) while their driver is killed
                os.kill(pid, signal.SIGSTOP)
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
            for pid in tasks:
                os.kill(pid, signal.SIGCONT)
            t0 = time.monotonic()
            wait_for("the killed driver's tasks to stop", lambda: not procs.running(tasks), 60, poll=0.02)
            print(f"\n[measured] the killed driver's tasks stopped {time.monotonic() - t0:.2f}s after the kill")
        finally:
            for pid in procs.running(procs.descendants(driver.pid)):
                os.kill(pid, signal.SIGKILL)
        left = len(shard_chunks())
        assert 1 <= left < 4, (tmp_path / "killed.log").read_text()[-3000:]
        run_dir = next(out.glob("run-*"))
        rc = main(["run", "--resume", run_dir.name, "--output-dir", str(out)])
        served = server.stats["requests"]
    assert rc == 0 and served > 0
    resumed_log = (run_dir / "logs" / "pipeline.log").read_text()  # (both attempts': only the second resumes)
    assert f"[generate-1of2] mtl: resuming: {left} chunk(s) finished by an earlier attempt are reused" in resumed_log
    summary = json.loads((out / "last_run.json").read_text())
    assert set(summary["results"]) >= {"base", "mtl", "reset"}
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sharded")
    every = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in every if r.data.tags.get("reset.step") == "generate-1of2"].count("KILLED") == 1
    assert not [r.info.run_name for r in every if r.info.status == "RUNNING"]
    runs = {r.data.tags.get("reset.step"): r for r in every if r.info.status == "FINISHED"}
    assert {
        "generate-1of2",
        "generate-2of2",
        "judge-1of2",
        "judge-2of2",
        "answer-1of2",
        "answer-2of2",
        "select",
        "evaluate",
        "register",
        # the second round, and every round's model on dev
        "generate-r2-1of2",
        "judge-r2-2of2",
        "select-r2",
        "finetune-reset-r2",
        "pick-round",
    } <= set(runs)
    pick = runs["pick-round"].data.metrics
    assert {"round_1.dev_score", "round_2.dev_score", "round_1.if_prompt_acc"} <= set(pick)
    assert pick["best_round"] in (1, 2) and runs["select-r2"].data.metrics["round"] == 2
    # tiny.yaml: 4 seen prompts per kind, 4 per shard; greedy + 2 samples at T 0.7 + the reference each
    assert [runs[f"generate-{k}of2"].data.metrics["prompts"] for k in (1, 2)] == [4, 4]
    assert sum(runs[f"generate-{k}of2"].data.metrics["candidates"] for k in (1, 2)) == 8 * 4
    held_out = sum(runs[f"answer-{k}of2"].data.metrics["prompts"] for k in (1, 2))
    assert held_out == 2 * 4 and all(runs[f"answer-{k}of2"].data.metrics["rows"] == 3 * 4 for k in (1, 2))
    for k in (1, 2):
        judge_run = runs[f"judge-{k}of2"]
        m = judge_run.data.metrics
        assert m["llm.requests"] > 0 and m["llm.errors"] == 0, m
        assert judge_run.data.params["judges"] == '["llm-instruction", "llm-faithfulness", "reference"]'
    assert sum(runs[f"judge-{k}of2"].data.metrics["llm.retries"] for k in (1, 2)) > 0
    parent = client.search_runs([exp.experiment_id], "tags.`reset.role` = 'pipeline'")[0]
    assert parent.info.status == "FINISHED"
    assert all(key not in json.dumps(r.data.params) for r in [parent, *every])

    # the resumed shard wrote exactly what an uninterrupted generation of that shard writes
    first = sorted((out / "kfp").iterdir())[0]  # the killed attempt's: mix and MTL were reused from it
    cfg = load_config(REPO / "configs" / "tiny.yaml", sets)
    monkeypatch.delenv("RESET_RESUME_DIR", raising=False)
    steps.generate(str(first / "finetune" / "checkpoint"), str(first / "mix-data" / "seen_prompts"),
                   steps.config(generate=cfg.generate.model_dump(), model=cfg.model.model_dump(),
                                tracking={"tracking_uri": f"sqlite:///{tmp_path / 'x.db'}"}),
                   out_candidates=str(tmp_path / "shard.jsonl"), shard=0, shards=2)
    want = (tmp_path / "shard.jsonl").read_bytes()
    assert any(f.read_bytes() == want for f in (out / "kfp").rglob("candidates") if f.is_file())
