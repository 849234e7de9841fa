"""Screenshots of the MLflow pages a user opens after a run, taken in headless Chromium
(tests/chromium.py): the Evaluation runs list, ReSet and MTL compared example by example, one
trace with its judges' assessments, the Judges page, and the Overview's quality and usage.

    .venv/bin/python docs/screenshots.py --store runs/mlflow.db --experiment reset-demo   # after make demo
    .venv/bin/python docs/screenshots.py --url http://127.0.0.1:5000 --experiment reset-demo
    .venv/bin/python docs/screenshots.py --sample     # a small store made here: what docs/img holds

Writes docs/img/mlflow-<page>.png (--out DIR to change) and prints each page's URL. A page whose
expected content (the runs' names, the judges, an assessment's rationale, ...) does not show within
--timeout seconds is an error (exit 1): a screenshot of an empty page is never written silently.
`--store` serves the store with `mlflow server` on 127.0.0.1 (a free port), stopped at the end.
`--sample` starts a server on a temporary store and writes into it through the server what a run
writes (reset.genai.log_evaluation: three models on 16 demo examples, and an LLM judge's calls
against tests/fault_server.py), so it needs no pipeline run. tests/test_genai_browser.py runs the
same pages and fails when one is empty.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WIDTH, HEIGHT = 1600, 1000
CLOSE_ASSISTANT = """(() => {  // the assistant's panel and first-visit tips cover the page
    const c = document.querySelector('[data-component-id="mlflow.assistant.chat_panel.close"]');
    if (c) c.click();
    [...document.querySelectorAll('button')].filter(b => (b.innerText || '').trim() === 'Got it')
        .forEach(b => b.click());
    return !!c;})()"""
SHOW_TOKENS = """(() => {
    const h = [...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && e.innerText === 'Token Usage');
    if (h) h.scrollIntoView({block: 'start'}); return !!h;})()"""
OPEN_ASSESSMENTS = """(() => {
    const pane = document.querySelector('[data-component-id="shared.model-trace-explorer.assessments-pane-toggle"]');
    if (pane && !document.querySelector('[data-component-id="shared.model-trace-explorer.close-assessments-pane"]'))
        pane.click();
    setTimeout(() => document.querySelectorAll(
        '[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]').forEach(e => e.click()), 1000);
    return !!pane;})()"""


@dataclass
class Context:
    """What the pages show, found in the store: the experiment, its evaluation runs by model, one
    trace of the candidate's run with its assessments, the judges and the evaluation dataset."""

    url: str
    experiment_id: str
    runs: dict[str, str]  # model -> evaluation run id (the newest run of each model)
    trace_id: str
    trace_texts: list[str]  # what its assessments pane must show
    judges: list[str]
    dataset: str
    instruction: str  # one compared example's prompt (its first words)
    llm_model: str = ""  # the LLM judge's model, when its calls were traced
    candidate: str = "reset"
    reference: str = "mtl"


@dataclass
class Page:
    slug: str
    what: str
    path: Callable[[Context], str]
    expect: Callable[[Context], list[str]]
    action: str = ""  # JavaScript run once the page shows its content
    after: Callable[[Context], list[str]] = field(default=lambda ctx: [])  # expected after the action


PAGES = [
    Page("evaluation-runs", "Evaluation runs: one run per model on the test split's evaluation dataset",
         lambda c: f"/#/experiments/{c.experiment_id}/evaluation-runs",
         lambda c: [*(f"eval-{m}" for m in c.runs), c.dataset, *(f"{j}/mean" for j in c.judges)]),
    Page("compare", "ReSet and MTL compared example by example, each judge's assessment side by side",
         lambda c: (f"/#/experiments/{c.experiment_id}/evaluation-runs?selectedRunUuid={c.runs[c.candidate]}"
                    f"&compareToRunUuid={c.runs[c.reference]}"),
         lambda c: ["Comparing", f"eval-{c.candidate}", f"eval-{c.reference}", c.instruction, *c.judges]),
    Page("trace", "One test example's trace: prompt, context, answer and every judge's assessment",
         lambda c: f"/#/experiments/{c.experiment_id}/traces?selectedEvaluationId={c.trace_id}",
         lambda c: [c.trace_id[3:11], "Assess"], action=OPEN_ASSESSMENTS,
         after=lambda c: ["Feedback", "expected_response", *c.trace_texts]),
    Page("judges", "The Judges page: our judges registered as MLflow scorers",
         lambda c: f"/#/experiments/{c.experiment_id}/judges", lambda c: [*c.judges, "Custom code"]),
    Page("quality", "Overview, Quality: each judge's mean and each pass / fail fact's pass rate",
         lambda c: f"/#/experiments/{c.experiment_id}/overview/quality",
         lambda c: ["Quality Summary", *c.judges, "instructions_followed"]),
    Page("usage", "Overview, Usage: traces, latency, and the LLM judge's tokens and cost",
         lambda c: f"/#/experiments/{c.experiment_id}/overview/usage",
         lambda c: ["Token Usage", "Latency", *([c.llm_model] if c.llm_model else [])], action=SHOW_TOKENS,
         after=lambda c: ["Cost Breakdown"]),
]


# ------------------------------------------------------------------------------------ the store
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(store_uri: str, *, artifacts: str = "", allow_code_judges: bool = False,
          timeout_s: float = 180) -> Iterator[str]:
    """`mlflow server` over `store_uri` on 127.0.0.1 (a free port, one worker) until the block
    ends; stopped by its PID. `allow_code_judges`: MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS, so that
    our judges can be registered through it."""
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    cmd = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", store_uri]
    if artifacts:
        cmd += ["--artifacts-destination", artifacts]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if allow_code_judges:
        env["MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS"] = "true"
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError("mlflow server did not start:\n" + log.read().decode(errors="replace")[-3000:])
                time.sleep(0.5)  # polling the server's health with a deadline
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def sample(url: str, experiment: str = "reset-sample", n: int = 8) -> str:
    """Write through the tracking server at `url` what a pipeline run's judge and evaluate steps
    write: an LLM judge's calls (against a local fault-injecting server, priced, one 429 per
    prompt), then base, MTL and ReSet answers to 2n demo examples as evaluation runs with their
    traces, the split as an evaluation dataset, the judges registered. Returns the experiment."""
    import mlflow

    from reset import genai, steps, tracking
    from reset.data.demo import build_demo
    from reset.data.records import Candidate
    from reset.evaluation.decision import run_decision
    from reset.evaluation.metrics import point_metrics, score_candidates
    from reset.judging.llm import build_judge
    from tests.fault_server import FaultConfig, FaultServer

    ins, gr = build_demo(seed=0, n_instruction=n, n_grounded=n)
    exs = ins + gr
    cfg = steps.config(tracking={"tracking_uri": url, "experiment": experiment})
    exp = tracking.experiment_id(cfg.tracking)
    parent = mlflow.MlflowClient().create_run(exp, run_name="sample pipeline run").info.run_id

    def answers(k: int) -> list[Candidate]:  # three "models": the reference answer, or a worse variant
        bad = {0: lambda e: e.response.upper() + " Also, more words.", 1: lambda e: e.response.split(".")[0],
               2: lambda e: e.response}
        return [Candidate(id=f"{e.id}/{k}", example_id=e.id, model="m",
                          text=e.response if (i + k) % 3 else bad[k](e)) for i, e in enumerate(exs)]

    with FaultServer(FaultConfig(latency_s=0.05, fail_first=1, fail_kinds=("429",))) as fs, \
            tracking.step_run(cfg.tracking, "judge", parent_run_id=parent):
        for axis in ("instruction", "faithfulness"):
            judge = build_judge(axis, {"base_url": fs.base_url, "model": "judge-llm", "backoff_base_s": 0.0,
                                       "price_per_1k_prompt_tokens": 0.15, "price_per_1k_completion_tokens": 0.6})
            judge.score([(e, c) for e, c in zip(exs, answers(2), strict=True)])
    rows = {m: score_candidates(exs, answers(k), cfg.judge, model_name=m) for k, m in enumerate(("base", "mtl",
                                                                                                  "reset"))}
    decision = run_decision(rows)
    payload = {**decision.to_dict(), "summary": decision.summary.to_dict()}
    with tracking.step_run(cfg.tracking, "evaluate", parent_run_id=parent) as step:
        mlflow.log_text("<html><body>the report: every figure with its interval</body></html>", "report.html")
        genai.log_evaluation(cfg, rows, {m: point_metrics(r) for m, r in rows.items()}, exs,
                             digest="5a" * 32, payload=payload, step_run=step)
    mlflow.MlflowClient().set_terminated(parent, "FINISHED")
    return experiment


def context(url: str, experiment: str) -> Context:
    """Find what the pages show in the experiment's newest evaluation runs."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {url}")
    runs: dict[str, str] = {}
    found = client.search_runs([exp.experiment_id], "tags.`mlflow.runType` = 'genai_evaluate'",
                               order_by=["attributes.start_time DESC"], max_results=100)
    for r in found:
        runs.setdefault(r.data.tags.get("reset.model", r.info.run_name), r.info.run_id)
    if not {"reset", "mtl"} <= set(runs):
        raise SystemExit(f"no evaluation runs of reset and mtl in {experiment!r}: run the pipeline first")
    run = client.get_run(runs["reset"])
    dataset = run.inputs.dataset_inputs[0].dataset.name if run.inputs.dataset_inputs else ""
    mlflow.set_tracking_uri(url)
    traces = mlflow.search_traces(locations=[exp.experiment_id], run_id=runs["reset"], return_type="list",
                                  max_results=50, include_spans=False)
    trace = max(traces, key=lambda t: (len(t.info.assessments), t.info.tags.get("reset.task") == "extractive"))
    feedback = [a for a in trace.info.assessments if a.feedback is not None]
    judges = sorted({k.split("/")[0] for k in run.data.metrics if k.endswith("/mean")} - {"faithfulness"}
                    - set(_FACTS))
    llm = [t for name in ("llm-faithfulness", "llm-instruction")
           for t in mlflow.search_traces(locations=[exp.experiment_id], filter_string=f"tags.`reset.judge` = '{name}'",
                                         return_type="list", max_results=1, include_spans=False)]
    first = next((a for a in feedback if a.name in judges and a.rationale), feedback[0] if feedback else None)
    instruction = str(traces[0].info.request_preview or "")
    try:
        import json

        instruction = json.loads(instruction)["instruction"]
    except (ValueError, KeyError, TypeError):
        pass
    return Context(url=url, experiment_id=exp.experiment_id, runs=runs, trace_id=trace.info.trace_id,
                   trace_texts=[a.name for a in feedback] + ([first.rationale[:30]] if first else []),
                   judges=judges, dataset=dataset, instruction=" ".join(instruction.split()[:4]),
                   llm_model=llm[0].info.tags.get("reset.llm_model", "") if llm else "")


_FACTS = ("instructions_followed", "answer_correct")


# ------------------------------------------------------------------------------------ the pages
def capture(ctx: Context, *, out: Path | None = None, pages: list[Page] | None = None,
            timeout_s: float = 120.0) -> dict[str, dict[str, Any]]:
    """Open each page in one Chromium tab (WIDTH x HEIGHT), wait until its expected content shows,
    run its action, screenshot. slug -> {"url", "text", "png", "missing": expected texts not shown}."""
    from tests.chromium import Chromium

    results: dict[str, dict[str, Any]] = {}
    with Chromium() as browser:
        tab = browser.open("about:blank")
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session=tab.session)
        for i, page in enumerate(pages or PAGES):
            url = ctx.url + page.path(ctx)
            if i:  # a full load per page: the app reads a route's query (the compared runs) when it starts
                browser.call("Page.navigate", {"url": "about:blank"}, session=tab.session)
            browser.call("Page.navigate", {"url": url}, session=tab.session)
            missing = _wait(tab, page.expect(ctx), timeout_s)
            tab.evaluate(CLOSE_ASSISTANT)
            if page.action and not missing:
                tab.evaluate(page.action)
                missing = _wait(tab, page.after(ctx), timeout_s)
            time.sleep(1.0)  # let the last render settle before the picture (no assertion rests on it)
            png = tab.screenshot()
            results[page.slug] = {"url": url, "text": tab.evaluate("document.body.innerText"), "png": png,
                                  "missing": missing, "what": page.what}
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"mlflow-{page.slug}.png").write_bytes(png)
    return results


def _wait(tab, texts: list[str], timeout_s: float) -> list[str]:
    """Poll the page's text until every one of `texts` shows; the ones still missing at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = tab.evaluate("document.body ? document.body.innerText : ''") or ""
        missing = [t for t in texts if t and t not in body]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)  # polling the page's content with a deadline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="a local store, e.g. runs/mlflow.db (served here)")
    src.add_argument("--url", help="a running MLflow server")
    src.add_argument("--sample", action="store_true", help="a small store made here (needs no pipeline run)")
    p.add_argument("--experiment", default="reset-demo")
    p.add_argument("--out", default=str(REPO / "docs" / "img"))
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a page may take to show its content")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, experiment = args.url, args.experiment
        elif args.store:
            store = args.store if "://" in args.store else f"sqlite:///{Path(args.store).resolve()}"
            url, experiment = stack.enter_context(serve(store)), args.experiment
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reset-screens-")))
            url = stack.enter_context(serve(f"sqlite:///{tmp / 'mlflow.db'}", artifacts=str(tmp / "artifacts"),
                                            allow_code_judges=True))
            experiment = sample(url)
        ctx = context(url, experiment)
        results = capture(ctx, out=Path(args.out), timeout_s=args.timeout)
    bad = 0
    for slug, r in results.items():
        state = "ok" if not r["missing"] else f"MISSING {r['missing']}"
        bad += bool(r["missing"])
        print(f"{slug:16s} {state}  {Path(args.out) / f'mlflow-{slug}.png'}  ({r['what']})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
