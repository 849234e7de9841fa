"""Where MLflow and Hugging Face users look (reset.genai, reset.cards, the LLM judge's traces),
against a real `mlflow server` process (tests/conftest.py: SQLite backend, artifacts on moto S3):

- the README's three-line example (our judges as MLflow scorers on a user's rows) runs as written
  and logs an evaluation run whose assessments are our judges' values and rationales;
- the evaluate step's MLflow side: the test split as an evaluation dataset named by its SHA-256 and
  reused, one evaluation run per model with one trace per example whose assessments are exactly
  the rows the statistics used, the report linked, the server's refusal of code-defined judges
  reported (the Judges page itself: tests/test_genai_browser.py, a server that allows them);
- the LLM judge's calls traced with tokens, cost, retries and cache hits, and no secret in them;
- the model card in the registered version's artifacts (its header names the base model, its
  results are the version's figures) and the selected set's dataset card (tag synthetic).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import mlflow
import pytest

from reset import genai, steps, tracking
from reset.cards import front_matter
from reset.data.records import Candidate, write_jsonl
from reset.evaluation.decision import run_decision
from reset.evaluation.metrics import point_metrics, score_candidates
from tests.fault_server import FaultConfig, FaultServer, expected_score

from .conftest import REPO

pytestmark = pytest.mark.integration
SECRET = "sk-reset-test-secret-0123456789"


@pytest.fixture()
def server(mlflow_server):
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


def _experiment(name: str) -> str:
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def _traces(run_id: str, exp: str):
    return mlflow.search_traces(locations=[exp], run_id=run_id, return_type="list", max_results=1000)


def _feedback(trace) -> dict[str, object]:
    return {a.name: a for a in trace.info.assessments if a.feedback is not None}


# ------------------------------------------------------------------------- the README's example
def _readme_example() -> str:
    """The Python lines of README's "Running it" example of our judges as MLflow scorers."""
    text = (REPO / "README.md").read_text()
    m = re.search(r"reset_scorers.*?<<'EOF'[^\n]*\n(.*?)\n\s*EOF\n", text, re.S)
    assert m, "README has no here-document example of reset_scorers"
    return "\n".join(line.strip() for line in m.group(1).splitlines())


def test_readme_example_runs_our_judges_as_mlflow_scorers(server):
    code = _readme_example()
    assert len(code.splitlines()) == 3 and "reset_scorers(" in code and "mlflow.genai.evaluate(" in code
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "MLFLOW_EXPERIMENT_NAME": "readme-example",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = mlflow.MlflowClient().get_experiment_by_name("readme-example").experiment_id
    (run,) = mlflow.search_runs([exp], output_format="list")
    assert run.data.tags["mlflow.runType"] == "genai_evaluate"
    rows = [json.loads(line) for line in (REPO / "docs" / "examples" / "answers.jsonl").read_text().splitlines()]
    names = ["rules", "k-precision", "reference", "instructions_followed", "answer_correct"]
    expected = {n: [genai.judge_feedback(n, REPO / "configs" / "demo.yaml", r["inputs"], r["outputs"],
                                         r["expectations"]) for r in rows] for n in names}
    for n in names:  # MLflow's mean is over the rows the judge applies to
        values = [float(f.value) for f in expected[n] if f is not None]
        assert run.data.metrics[f"{n}/mean"] == pytest.approx(sum(values) / len(values)), (n, run.data.metrics)
    traces = _traces(run.info.run_id, exp)
    assert len(traces) == len(rows)
    by_instruction = {r["inputs"]["instruction"]: i for i, r in enumerate(rows)}
    seen_false = False
    for t in traces:
        i = by_instruction[json.loads(t.info.request_preview)["instruction"]]
        fb = _feedback(t)
        for n in names:
            want = expected[n][i]
            assert (n in fb) == (want is not None), (n, i)
            if want is not None:
                assert fb[n].feedback.value == want.value and fb[n].rationale == want.rationale
                assert fb[n].source.source_type == "CODE" and fb[n].source.source_id.startswith("reset.")
                seen_false |= fb[n].feedback.value is False
    assert seen_false  # the example holds a failing row: the pass rates are not all 1


# ------------------------------------------------------------------- the evaluate step's runs
@pytest.fixture(scope="module")
def evaluated(demo):
    """Three models' rows on a small split, the decision's payload, as the evaluate step has them."""
    exs = demo[0][:6] + demo[1][:6]

    def answers(k: int) -> list[Candidate]:
        return [Candidate(id=f"{e.id}/{k}", example_id=e.id, model="m",
                          text=e.response if (i + k) % 3 else e.response.upper() + ", also more words")
                for i, e in enumerate(exs)]

    cfg = steps.config(tracking={"experiment": "genai-eval"})
    rows = {m: score_candidates(exs, answers(k), cfg.judge, model_name=m) for k, m in enumerate(("base", "mtl",
                                                                                                  "reset"))}
    d = run_decision(rows)
    payload = {**d.to_dict(), "summary": d.summary.to_dict()}
    return exs, rows, payload


def test_each_model_is_an_evaluation_run_with_a_trace_per_example(server, evaluated):
    exs, rows, payload = evaluated
    cfg = steps.config(tracking={"tracking_uri": server, "experiment": "genai-eval"})
    digest = "5e" * 32
    exp = tracking.experiment_id(cfg.tracking)
    with mlflow.start_run(experiment_id=exp, run_name="parent") as parent:
        pass
    with tracking.step_run(cfg.tracking, "evaluate", parent_run_id=parent.info.run_id) as step:
        mlflow.log_text("<html>the report</html>", "report.html")
        runs = genai.log_evaluation(cfg, rows, {m: point_metrics(r) for m, r in rows.items()}, exs, digest=digest,
                                    payload=payload, step_run=step)
    # the split: an evaluation dataset named and tagged by its digest, one record per example
    ds = genai.evaluation_dataset(exs, split="test", digest=digest, experiment_id=exp)  # found, not made again
    assert ds.name == "reset-test-" + digest[:12] and ds.tags[genai.DATASET_TAG] == digest
    again = mlflow.genai.datasets.search_datasets(filter_string=f"name = '{ds.name}'")
    assert [d.dataset_id for d in again] == [ds.dataset_id]
    records = ds.to_df()
    assert sorted(r["instruction"] for r in records["inputs"]) == sorted(e.instruction for e in exs)
    client = mlflow.MlflowClient()
    assert set(runs) == {"base", "mtl", "reset"}
    for model, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.runType"] == "genai_evaluate" and run.data.tags["reset.model"] == model
        # top-level (the Evaluation runs page shows nested runs without their names), tagged with their step
        assert "mlflow.parentRunId" not in run.data.tags and run.info.status == "FINISHED"
        assert run.data.tags["reset.evaluate_run"] == step.info.run_id
        assert run.data.tags["reset.pipeline_run"] == parent.info.run_id
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == [ds.name]
        assert run.data.tags[genai.REPORT_TAG] == f"runs:/{step.info.run_id}/report.html"
        note = run.data.tags["mlflow.note.content"].replace("\\[", "[").replace("\\]", "]")
        assert "report.html" in note and "if_prompt_acc:" in note and "[" in note
        if model == "reset":
            assert payload["verdicts"][0] in note  # ReSet vs MTL with its intervals and p
        assert "if_prompt_acc.low" in run.data.metrics and "faithfulness.high" in run.data.metrics
        assert ("vs_mtl.faithfulness.p" in run.data.metrics) == (model != "mtl")
        traces = _traces(run_id, exp)
        assert len(traces) == len(exs)
        by_id = {r["example_id"]: r for r in rows[model]}
        judged = {"rules": [], "k-precision": [], "reference": []}
        for t in traces:
            row = by_id[t.info.tags["reset.example_id"]]
            assert t.info.tags["reset.model"] == model
            assert t.data.spans[0].outputs == row["response"]
            fb = _feedback(t)
            for name in judged:  # exactly the values the statistics used, with their rationale
                value = row[f"judge.{name}"]
                assert (name in fb) == (value is not None)
                if value is not None:
                    assert fb[name].feedback.value == pytest.approx(value)
                    assert fb[name].rationale == row[f"why.{name}"]
                    judged[name].append(value)
            assert ("instructions_followed" in fb) == (row["if_pass"] is not None)
            if row["if_pass"] is not None:
                assert fb["instructions_followed"].feedback.value is row["if_pass"]
            if row["faithfulness"] is not None:
                assert fb["faithfulness"].feedback.value == pytest.approx(row["faithfulness"])
            exp_names = {a.name for a in t.info.assessments if a.expectation is not None}
            assert "expected_response" in exp_names
        for name, values in judged.items():
            assert run.data.metrics[f"{name}/mean"] == pytest.approx(sum(values) / len(values))


def test_a_server_that_refuses_code_judges_is_reported_not_fatal(server):
    exp = _experiment("genai-refused")
    registered, note = genai.register_judges(None, exp)
    assert registered == [] and "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS" in note


def test_a_local_store_lists_our_judges_once(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("local-judges", artifact_location=(tmp_path / "art").as_uri())
        registered, note = genai.register_judges(None, exp)
        assert note == "" and registered == ["rules", "k-precision", "reference", *genai.GATES]
        body = genai._stored_definitions(exp)["rules"]  # what MLflow runs: our adapter, named judge and config
        assert body.startswith("from reset.genai import judge_feedback\nreturn judge_feedback('rules', {")
        assert genai.register_judges(None, exp)[0] == []  # unchanged definitions: not registered again
        assert "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS" not in os.environ
    finally:
        mlflow.set_tracking_uri(None)


def test_ifeval_checks_agree_when_mlflow_runs_scorers_in_threads():
    """MLflow runs scorers in threads; IFEval's checkers (langdetect) were not safe from a cold start."""
    code = ("import concurrent.futures as cf; from reset import ifeval\n"
            "c = {'id': 'change_case:english_lowercase', 'kwargs': {}}\n"
            "with cf.ThreadPoolExecutor(8) as ex:\n"
            "    print(sum(ex.map(lambda _: ifeval.check(c, 'i read the news before work.'), range(40))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "40"


# ------------------------------------------------------------------------ the LLM judge's traces
def test_llm_judge_calls_are_traced_with_usage_and_no_secret(server, demo, tmp_path, monkeypatch):
    from reset.judging.llm import build_judge

    monkeypatch.setenv("RESET_TEST_KEY", SECRET)
    grounded = demo[1][:3]
    pairs = [(e, Candidate(id=f"{e.id}/c", example_id=e.id, text=e.response)) for e in grounded]
    pairs.append(pairs[0])  # a duplicate: sent once
    exp = _experiment("genai-llm")
    with FaultServer(FaultConfig(fail_first=1, fail_kinds=("429",), api_key=SECRET)) as fs:
        judge = build_judge("faithfulness", {
            "base_url": fs.base_url, "model": "judge-model", "api_key_env": "RESET_TEST_KEY", "cache_path":
            str(tmp_path / "cache.sqlite"), "price_per_1k_prompt_tokens": 0.5, "price_per_1k_completion_tokens": 1.5,
            "backoff_base_s": 0.0})
        with mlflow.start_run(experiment_id=exp) as run:
            first = judge.score(pairs)
            again = judge.score(pairs)  # every judgment from the cache
        mlflow.flush_trace_async_logging()
        stats = judge.stats()
        judge.cache.close()
    assert [r.cached for r in again] == [True] * 4 and not any(r.cached for r in first)
    traces = sorted(_traces(run.info.run_id, exp), key=lambda t: t.info.request_time)
    assert len(traces) == 2
    sent, cached = traces
    root = sent.data.spans[0] if sent.data.spans[0].parent_id is None else None
    assert root is not None and root.name == "llm-faithfulness"
    assert root.attributes["reset.requests"] == 6 and root.attributes["reset.retries"] == 3  # one 429 each
    assert root.attributes["reset.deduplicated"] == 1 and root.attributes["reset.cache_hits"] == 0
    calls = [s for s in sent.data.spans if s.span_type == "CHAT_MODEL"]
    assert len(calls) == 3 and all(s.attributes["reset.attempts"] == 2 for s in calls)
    usage = sent.info.token_usage
    assert usage["input_tokens"] == stats["prompt_tokens"] and usage["output_tokens"] == stats["completion_tokens"]
    assert root.attributes["reset.cost_usd"] == pytest.approx(stats["cost_usd"])
    assert all(s.attributes["mlflow.chat.tokenUsage"]["input_tokens"] > 0 for s in calls)
    scores = {s.inputs["messages"][1]["content"]: s.outputs["score"] for s in calls}
    assert all(v == pytest.approx((expected_score(k) - 1) / 9) for k, v in scores.items())
    assert cached.data.spans[0].attributes["reset.cache_hits"] == 4
    assert not [s for s in cached.data.spans if s.span_type == "CHAT_MODEL"]
    for t in traces:  # the key is in the environment, the request headers and nowhere else
        assert SECRET not in t.to_json() and SECRET not in json.dumps(t.info.tags)


def test_llm_judge_as_an_mlflow_scorer(server, demo, tmp_path):
    rows = [{**genai.record_of(e), "outputs": e.response} for e in demo[1][:2]]
    exp = _experiment("genai-llm-scorer")
    mlflow.set_experiment(experiment_id=exp)
    with FaultServer(FaultConfig()) as fs:
        cfg = {"judges": ["llm-faithfulness"], "llm": {"base_url": fs.base_url, "model": "judge-model",
                                                       "cache_path": str(tmp_path / "c.sqlite")}}
        scorers = genai.reset_scorers(cfg, gates=False)
        result = mlflow.genai.evaluate(data=rows, scorers=scorers)
    traces = _traces(result.run_id, exp)
    assert len(traces) == 2
    for t in traces:
        (fb,) = [a for a in t.info.assessments if a.feedback is not None]
        assert fb.name == "llm-faithfulness" and fb.source.source_type == "LLM_JUDGE"
        assert fb.source.source_id == "judge-model" and fb.rationale and 0.0 <= fb.feedback.value <= 1.0
        assert fb.metadata["rubric"].startswith("reset.faithfulness@")
    assert "llm-faithfulness/mean" in result.metrics


# ----------------------------------------------------------------------------------- the cards
@pytest.fixture()
def pipeline_parent(server, monkeypatch):
    """A parent run as start-run makes it (the whole config as config.json) and the mix step's
    data card, found by the KFP run id in the environment as every step finds them."""
    job = f"cards-{os.getpid()}"
    monkeypatch.setenv(tracking.JOB_ENV, job)
    sections = {"model": {"base": "builtin:tiny-llama"}, "judge": {"judges": ["rules", "k-precision", "reference"]},
                "generate": {"samples_per_setting": 2}, "tracking": {"tracking_uri": server, "experiment": "cards"}}
    cfg = steps.config(**sections)
    tracking.start_parent(cfg.tracking, sections, {tracking.JOB_TAG: job})
    card = {"sources": [{"name": "demo-grounded", "slot": "grounded", "format": "reset",
                         "path": "hf://datasets/acme/grounded-qa@v1/train.jsonl", "rows": 40, "kept": 40,
                         "files": [{"file": "train.jsonl", "digest": "ab" * 32}]}]}
    with tracking.step_run(cfg.tracking, "mix"):
        mlflow.log_dict(card, "data_card/data_card.json")
    return cfg


def test_registered_version_holds_a_model_card_matching_its_figures(pipeline_parent, evaluated, tiny_model_dir,
                                                                     tmp_path):
    exs, rows, payload = evaluated
    cfg = steps.config(register={"model_name": "carded", "compare_champion": False},
                       tracking=pipeline_parent.tracking.model_dump(), model={"base": "builtin:tiny-llama"})
    metrics = {m: point_metrics(r) for m, r in rows.items()}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**payload, "metrics": metrics, "split": "test", "split_digest": "77" * 32}))
    decision = steps.register(str(tiny_model_dir), str(path), cfg)
    client = mlflow.MlflowClient()
    version = client.get_model_version("carded", decision["version"])
    local = mlflow.artifacts.download_artifacts(f"models:/carded/{decision['version']}", dst_path=str(tmp_path / "v"))
    readmes = sorted(p for p in __import__("pathlib").Path(local).rglob("README.md"))
    weights = [p for p in readmes if (p.parent / "config.json").exists()]
    assert len(readmes) == 2 and len(weights) == 1  # the MLflow model's and the weights' (what KServe serves)
    card = readmes[0].read_text()
    assert readmes[1].read_text() == card
    head = front_matter(card)
    assert head["base_model"] == "builtin:tiny-llama" and "synthetic" not in head["tags"]
    assert head["datasets"] == ["acme/grounded-qa"]
    index = {m["type"]: m for r in head["model-index"][0]["results"] for m in r["metrics"]}
    assert {"if_prompt_acc", "faithfulness"} <= set(index)
    for key, m in index.items():  # the version's own figures (its metric.* tags), with the intervals
        assert m["value"] == pytest.approx(float(version.tags[f"metric.{key}"]), abs=5e-5)
        est = payload["summary"]["estimates"]["reset"][key]
        assert (m["args"]["ci_low"], m["args"]["ci_high"]) == (round(est["low"], 4), round(est["high"], 4))
        assert m["args"]["vs_mtl_p"] == round(payload["summary"]["comparisons"]["reset"][key]["p_value"], 4)
    assert head["model-index"][0]["results"][0]["dataset"]["revision"] == "77" * 8
    assert payload["verdicts"][0] in card and "## Limitations" in card
    assert "samples_per_setting: 2" in card  # the pipeline's config, from the parent run


def test_selected_set_carries_a_dataset_card(pipeline_parent, demo, tmp_path):
    from reset.judging.run import judge_all

    exs = demo[0][:8] + demo[1][:8]
    cands = [Candidate(id=f"{e.id}/g{k}", example_id=e.id, model="mtl", decoding={"strategy": s},
                       text=e.response if k == 0 else e.response.upper())
             for e in exs for k, s in enumerate(("greedy", "sample"))]
    judged = judge_all(exs, cands, pipeline_parent.judge)
    for name, items in (("seen", exs), ("cands", cands), ("judgments", judged.judgments)):
        write_jsonl(tmp_path / f"{name}.jsonl", items)
    cfg = steps.config(select={"threshold": 0.3}, tracking=pipeline_parent.tracking.model_dump())
    out = tmp_path / "card.md"
    rep = steps.select(str(tmp_path / "seen.jsonl"), str(tmp_path / "cands.jsonl"), str(tmp_path / "judgments.jsonl"),
                       cfg, out_selected=str(tmp_path / "selected.jsonl"), out_card=str(out))
    card = out.read_text()
    head = front_matter(card)
    assert "synthetic" in head["tags"] and head["configs"][0]["data_files"] == "selected.jsonl"
    assert head["source_datasets"] == ["acme/grounded-qa"]
    assert "`mtl` (32 candidates)" in card and "fine-tuned from `builtin:tiny-llama`" in card
    assert "Judges: k-precision, reference, rules" in card and "threshold 0.3" in card
    for group, g in rep["per_group"].items():  # every keep rate of the selection report
        assert f"| {group} | {g['prompts']} | {g['kept']} | {g['keep_rate']:.2f} |" in card
    assert "samples_per_setting: 2" in card  # the pipeline's config
    (run,) = mlflow.search_runs([tracking.experiment_id(cfg.tracking)], "tags.`reset.step` = 'select'",
                                output_format="list")
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "selected_set")}
    assert files == {"selected_set/README.md", "selected_set/selected.jsonl"}
    logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/selected_set/README.md")
    assert logged == card
