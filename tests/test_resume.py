"""Mid-step resume (reset/data/chunks.py): a generate, judge or evaluate step killed with SIGKILL
halfway and run again writes exactly what an uninterrupted run writes, reusing the chunks the killed
attempt finished (its log counts them); a changed input is never resumed onto; one shard of the
generate step resumes the same way under kfp.local.

The killed attempts are subprocesses (a SIGKILL is the fault injected); the uninterrupted and the
resumed attempts run in this process, on the tiny model with the hf backend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reset import steps
from reset.data import chunks
from reset.data.demo import build_demo
from reset.data.records import Candidate, Example, read_jsonl, write_jsonl
from reset.judging.run import judge_all

from .conftest import REPO, wait_for
from .test_generation import _vllm_python, examples  # noqa: F401  (a fixture)

DEADLINE_S = 600  # a hang guard for one attempt on a loaded 2-core machine
GEN = {"grid": [{"temperature": 0.0}, {"temperature": 0.7, "top_p": 0.9}], "samples_per_setting": 2,
       "max_new_tokens": 24, "batch_size": 4, "backend": "hf", "chunk_prompts": 2}
EVAL = {"max_new_tokens": 16, "batch_size": 4, "backend": "hf", "chunk_prompts": 2}
JUDGE = {"judges": ["rules", "k-precision", "reference"], "chunk_prompts": 2}


def _cfg(tmp: Path, model: str):
    return steps.config(generate=GEN, evaluate=EVAL, judge=JUDGE, model={"base": model, "max_prompt_length": 96},
                        tracking={"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "resume"})


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("resume")
    ifs, cds = build_demo(seed=3, n_instruction=6, n_grounded=6)
    write_jsonl(tmp / "seen.jsonl", ifs + cds)  # 12 prompts: 6 chunks of 2
    return tmp, str(tiny_model_dir)


# The step a killed attempt runs, in a process of its own (its arguments as JSON).
SCRIPT = """
import json, sys
from reset import steps
a = json.loads(sys.argv[1])
cfg = steps.config(**a["cfg"])
if a["step"] == "generate":
    steps.generate(a["model"], a["seen"], cfg, out_candidates=a["out"], shard=a.get("shard", 0),
                   shards=a.get("shards", 1))
elif a["step"] == "judge":
    steps.judge(a["seen"], a["candidates"], cfg, out_judgments=a["out"])
else:
    steps.evaluate_answers({"mtl": a["model"]}, a["seen"], cfg, out_rows=a["out"])
"""


def _chunk_files(root: Path, step: str) -> list[Path]:
    return sorted((root / step).glob("*/*.jsonl")) if (root / step).is_dir() else []


def kill_halfway(root: Path, step: str, args: dict, at_least: int, log: Path) -> int:
    """Run `step` in a subprocess with its chunks under `root`; SIGKILL it once `at_least` chunks are
    written. Returns how many chunk files the killed attempt left."""
    env = {**os.environ, chunks.RESUME_ENV: str(root), "PYTHONPATH": str(REPO)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(f"{at_least} chunks of {step}", lambda: len(_chunk_files(root, step)) >= at_least
                 or proc.poll() is not None, DEADLINE_S, poll=0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert not Path(args["out"]).exists()  # killed before it wrote its output
    return len(_chunk_files(root, step))


def _resumed(text: str) -> int:
    """The chunks a step's log says it reused."""
    line = next((x for x in text.splitlines() if "resuming:" in x), "")
    return int(line.split("resuming: ", 1)[1].split()[0]) if line else 0


def _skipped_samples(text: str) -> int:
    """The samples the generation backend took from finished chunks instead of generating them."""
    return sum(int(x.rsplit("; ", 1)[1].split()[0]) for x in text.splitlines()
               if x.startswith("[generate:hf] ") and "from chunks an earlier attempt finished" in x)


def _count_generated(monkeypatch) -> list[int]:
    """The samples the HF backend really generates from here on (its _sample calls), not what its log says."""
    from reset.models.generation import hf

    made: list[int] = []
    real = hf._sample

    def counting(model, tok, reqs, *a, **kw):
        made.append(sum(r.n for r in reqs))
        return real(model, tok, reqs, *a, **kw)

    monkeypatch.setattr(hf, "_sample", counting)
    return made


def test_generate_killed_halfway_resumes_to_the_uninterrupted_output_and_a_changed_prompt_is_not_resumed_onto(
        world, capsys, monkeypatch):
    tmp, model = world
    cfg = _cfg(tmp, model)
    whole, again = tmp / "whole.jsonl", tmp / "again.jsonl"
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "r-whole"))
    steps.generate(model, str(tmp / "seen.jsonl"), cfg, out_candidates=str(whole))
    assert not _chunk_files(tmp / "r-whole", "generate")  # a finished step removes its chunks

    root = tmp / "r-killed"
    args = {"step": "generate", "model": model, "seen": str(tmp / "seen.jsonl"), "out": str(again),
            "cfg": {"generate": GEN, "model": {"base": model, "max_prompt_length": 96},
                    "tracking": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "resume"}}}
    left = kill_halfway(root, "generate", args, 2, tmp / "killed-generate.log")
    assert 2 <= left < 6
    shutil.copytree(root, tmp / "r-changed")  # the same killed attempt, for the changed-input case below

    capsys.readouterr()
    monkeypatch.setenv(chunks.RESUME_ENV, str(root))
    made = _count_generated(monkeypatch)
    steps.generate(model, str(tmp / "seen.jsonl"), cfg, out_candidates=str(again))
    log = capsys.readouterr().out
    assert _resumed(log) == left, log  # the finished chunks were skipped, and counted
    assert _skipped_samples(log) == left * 2 * 3  # 2 prompts x (greedy + 2 samples) a chunk, not generated again
    total = len(whole.read_text().splitlines())
    assert sum(made) == total - left * 2 * 3  # only the rest was generated (references are not generated)
    assert again.read_bytes() == whole.read_bytes()  # exactly what the uninterrupted run wrote

    # a changed prompt file: the killed attempt's chunks are not resumed onto, and the log says why
    rows = [json.loads(x) for x in (tmp / "seen.jsonl").read_text().splitlines()]
    rows[0]["instruction"] += " Answer in one word."
    write_jsonl(tmp / "seen2.jsonl", rows)
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "r-changed"))
    steps.generate(model, str(tmp / "seen2.jsonl"), cfg, out_candidates=str(tmp / "changed.jsonl"))
    log = capsys.readouterr().out
    assert _resumed(log) == 0 and f"not resuming the {left} chunk(s)" in log and "changed: prompts)" in log, log
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "r-fresh"))
    steps.generate(model, str(tmp / "seen2.jsonl"), cfg, out_candidates=str(tmp / "fresh.jsonl"))
    assert (tmp / "changed.jsonl").read_bytes() == (tmp / "fresh.jsonl").read_bytes()


def test_evaluate_answers_killed_halfway_resume_to_the_uninterrupted_rows(world, capsys, monkeypatch):
    tmp, model = world
    cfg = _cfg(tmp, model)
    heldout = str(tmp / "seen.jsonl")
    whole, again = tmp / "rows-whole.jsonl", tmp / "rows-again.jsonl"
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "e-whole"))
    steps.evaluate_answers({"mtl": model}, heldout, cfg, out_rows=str(whole))

    root = tmp / "e-killed"
    args = {"step": "answer", "model": model, "seen": heldout, "out": str(again),
            "cfg": {"evaluate": EVAL, "judge": JUDGE, "model": {"base": model, "max_prompt_length": 96},
                    "tracking": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "resume"}}}
    left = kill_halfway(root, "answer", args, 3, tmp / "killed-answer.log")  # base and mtl: 12 chunks
    assert 3 <= left < 12
    capsys.readouterr()
    monkeypatch.setenv(chunks.RESUME_ENV, str(root))
    made = _count_generated(monkeypatch)
    steps.evaluate_answers({"mtl": model}, heldout, cfg, out_rows=str(again))
    log = capsys.readouterr().out
    assert _resumed(log) == left and _skipped_samples(log) == left * 2, log  # 2 answers a chunk
    assert sum(made) == len(whole.read_text().splitlines()) - left * 2  # only the rest was answered
    assert again.read_bytes() == whole.read_bytes()


def test_judge_resumes_the_chunks_a_stopped_attempt_finished(world, capsys, monkeypatch):
    """The judge step's chunks (an attempt stopped after three chunks: what a killed one leaves)."""
    tmp, model = world
    cfg = _cfg(tmp, model)
    seen = str(tmp / "seen.jsonl")
    cands = tmp / "cands.jsonl"
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "j-gen"))
    steps.generate(model, seen, cfg, out_candidates=str(cands))
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "j-whole"))
    steps.judge(seen, str(cands), cfg, out_judgments=str(tmp / "j-whole.jsonl"))
    with (pytest.raises(RuntimeError, match="stopped after 3 chunks"),
          chunks.session("judge", root=tmp / "j-killed") as resume):
        judged = judge_all(read_jsonl(seen, Example)[0], read_jsonl(cands, Candidate)[0], cfg.judge, resume=resume)
        assert judged.judgments
        for f in sorted(resume.stores[0].dir.glob("*.jsonl"))[3:]:  # three chunks: what a stopped attempt leaves
            f.unlink()
        raise RuntimeError("stopped after 3 chunks")
    capsys.readouterr()
    monkeypatch.setenv(chunks.RESUME_ENV, str(tmp / "j-killed"))
    steps.judge(seen, str(cands), cfg, out_judgments=str(tmp / "j-again.jsonl"))
    log = capsys.readouterr().out
    assert _resumed(log) == 3 and "[judge] 18 judgments from chunks an earlier attempt finished" in log, log
    assert (tmp / "j-again.jsonl").read_bytes() == (tmp / "j-whole.jsonl").read_bytes()



@pytest.mark.integration
def test_the_vllm_worker_writes_each_chunk_as_it_finishes_and_a_next_attempt_asks_only_for_the_rest(
        vllm_tiny_dir, examples, tmp_path):  # noqa: F811
    """vLLM's worker (its own environment) writes a chunk file as each chunk finishes; an attempt that
    stopped after two of them is continued by asking the engine only for the other chunks, and its
    candidates equal an uninterrupted attempt's."""
    from reset.config import GenerateConfig, ModelConfig
    from reset.models.generation import run

    cfg = GenerateConfig(grid=[{"temperature": 0.0}, {"temperature": 1.0, "top_p": 0.95}], samples_per_setting=2,
                         max_new_tokens=8, backend="vllm", vllm_python=_vllm_python(), vllm_kv_cache_gb=1,
                         chunk_prompts=3)
    mcfg = ModelConfig(max_prompt_length=96)
    lines: list[str] = []
    with chunks.session("generate", lines.append, root=tmp_path / "whole") as resume:
        whole = run(vllm_tiny_dir, examples, cfg, mcfg, model_name="m", log=lines.append, resume=resume)
        (store,) = resume.stores
        assert len(list(store.dir.glob("*.jsonl"))) == 4  # 12 prompts, 3 a chunk: each written by the worker
    with pytest.raises(RuntimeError, match="stopped"), chunks.session("generate", root=tmp_path / "r") as resume:
        run(vllm_tiny_dir, examples, cfg, mcfg, model_name="m", log=lines.append, resume=resume)
        for f in sorted(resume.stores[0].dir.glob("*.jsonl"))[2:]:  # what an attempt stopped after two leaves
            f.unlink()
        raise RuntimeError("stopped")
    lines.clear()
    with chunks.session("generate", lines.append, root=tmp_path / "r") as resume:
        again = run(vllm_tiny_dir, examples, cfg, mcfg, model_name="m", log=lines.append, resume=resume)
    assert any("[generate:vllm] 12 of 24 requests from chunks an earlier attempt finished" in x for x in lines), lines
    assert any("-> 36 samples" in x for x in lines)
    assert [(c.id, c.text, c.decoding) for c in again.candidates] == [(c.id, c.text, c.decoding)
                                                                    for c in whole.candidates]


def test_on_a_cluster_the_chunks_go_to_the_runs_volume_and_locally_to_the_run_folder(tmp_path):
    """A KFP retry of a task (or of one shard) finds the chunks of its last attempt where it mounts
    the run's volume; a local run's tasks find them in the run folder."""
    import yaml

    from pipelines import definitions, local_runs
    from reset.config import STEPS, load_config
    from reset.config.steps import settings_of

    cfg = load_config(REPO / "configs" / "paper-7b.yaml", ["cluster.shards=2"])
    out = tmp_path / "p.yaml"
    definitions.compile_to(cfg, definitions.TRAINING, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    env = {name: {e["name"]: e["value"] for e in spec["container"].get("env", [])}
           for name, spec in docs[0]["deploymentSpec"]["executors"].items()}
    for name in ("exec-generate-candidates", "exec-judge-candidates", "exec-answer-heldout", "exec-evaluate-models"):
        assert [m["mountPath"] for m in k8s[name]["pvcMount"]] == ["/mnt/reset"]
        assert env[name][chunks.RESUME_ENV] == "/mnt/reset/resume"
    assert all(STEPS[settings_of(s)].volume for s in ("generate", "judge", "answer", "evaluate", "pick-round"))
    run = local_runs.LocalRun(tmp_path / "run-1", "job", resumed=False)
    assert local_runs.env_for_tasks(run)[chunks.RESUME_ENV] == str(tmp_path / "run-1" / "resume")
