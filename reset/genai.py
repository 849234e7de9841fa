"""ReSet where MLflow and Hugging Face users look: our judges as MLflow scorers (and on the
Judges page), the held-out split as an MLflow evaluation dataset, each evaluated model as an
evaluation run with one trace per example carrying every judge's assessment, and the model and
dataset cards (reset.cards) filled from the pipeline's runs.

Our judges on anyone's data (README, "Running it"):

    import mlflow
    from reset.genai import reset_scorers
    mlflow.genai.evaluate(data=rows, scorers=reset_scorers("configs/demo.yaml"))

A row is MLflow's `{"inputs": ..., "outputs": ..., "expectations": ...}`:
  inputs        {"instruction": "...", "context": "..."}  (context: the passage, absent or None
                without one; "question", "request" or "prompt" are read as the instruction)
  outputs       the model's answer (a string)
  expectations  optional: "expected_response" (the reference: the `reference` judge), "constraints"
                (IFEval instructions, as in reset.data.records: the `rules` judge and
                `instructions_followed`), "answer" (the gold span: `answer_correct`), "task"
                (open | extractive | abstractive), "counterfactual", "memory_answer", "key_facts"

`reset_scorers(config)` gives one scorer per configured judge (judge.judges: IFEval rules,
K-Precision, embedding, NLI, reference, llm-instruction, llm-faithfulness) and the two pass / fail
facts selection gates on (`instructions_followed`, `answer_correct`). Each returns a Feedback: the
judge's score in [0, 1] (a bool for the two facts), its rationale, and its source (CODE with the
judge's name, or LLM_JUDGE with the judge model's name); nothing where the judge does not apply
(no constraints, no context, no reference), so MLflow's mean is over the examples it applies to.
The judges are built once per process and configuration: the LLM judges share one ledger (budget,
counters) and one SQLite cache (judge.llm.cache_path), exactly as in the judge step. A scorer's
serialized form is a plain `@scorer` function that imports this module and names its judge and
configuration (no secret: the API key only ever comes from the variable judge.llm.api_key_env
names), so it can be registered and shows on MLflow's Judges page (`register_judges`).

The pipeline's evaluate step (`log_evaluation`) does not score twice: its traces carry the values
the statistics were computed from (reset.evaluation rows: `judge.<name>` and `why.<name>`), so the
Evaluation runs page and the paired tests of the report agree example by example. MLflow's
aggregates have no intervals; each run's description gives the verdict with them and links the
report (reset.report tag).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reset import config as configs
from reset import tracking
from reset.config import JUDGE_AXES, JudgeConfig, PipelineConfig
from reset.data.records import Candidate, Example
from reset.data.storage import is_local_store
from reset.errors import duplicate_row

# The pass / fail facts of reset.judging.gates that selection requires, as boolean scorers (MLflow
# shows them as pass rates). no_copy is left out: it only says whether answer_correct was voided.
GATES = ("instructions_followed", "answer_correct")
# The rows' fields that become assessments besides the judges: (assessment name, row field).
ROW_FACTS = (("instructions_followed", "if_pass"), ("answer_correct", "answer_correct"),
             ("faithfulness", "faithfulness"))
RUN_TYPE = {"mlflow.runType": "genai_evaluate"}  # what mlflow.genai.evaluate tags its runs with
REPORT_TAG = "reset.report"
DATASET_TAG = "reset.sha256"
FLUSH_EVERY = 200  # traces per flush of MLflow's export queue (it drops traces when it overflows: 1000 tasks)


# ------------------------------------------------------------------------------ rows <-> records
def record_of(example: Example) -> dict[str, Any]:
    """An example as an MLflow evaluation record: what the model saw (inputs) and what the judges
    compare with (expectations)."""
    expectations: dict[str, Any] = {"expected_response": example.response, "task": example.task}
    if example.constraints:
        expectations["constraints"] = example.constraints
    for key in ("answer", "counterfactual", "memory_answer", "key_facts"):
        if example.meta.get(key) not in (None, "", [], {}):
            expectations[key] = example.meta[key]
    return {"inputs": {"instruction": example.instruction, "context": example.context},
            "expectations": expectations}


def example_of(inputs: Mapping[str, Any] | str | None, expectations: Mapping[str, Any] | None = None) -> Example:
    """The Example our judges read, from an MLflow row's inputs and expectations (see the module
    docstring). Not validated as a training record: a row without a reference is fine here."""
    if isinstance(inputs, str) or inputs is None:
        inputs = {"instruction": inputs or ""}
    exp = dict(expectations or {})
    instruction = next((str(inputs[k]) for k in ("instruction", "question", "request", "prompt", "input")
                        if inputs.get(k)), "")
    if not instruction:
        raise ValueError(f"inputs hold no instruction (expected one of instruction, question, request, prompt): "
                         f"{sorted(inputs)}")
    context = inputs.get("context")
    context = str(context) if context not in (None, "") else None
    task = exp.get("task") or ("extractive" if context and exp.get("answer") else "abstractive" if context else "open")
    constraints = exp.get("constraints") or []
    if constraints:
        from reset.ifeval import validate_constraints

        validate_constraints(constraints)
    reference = exp.get("expected_response", exp.get("reference", ""))
    meta = {k: exp[k] for k in ("answer", "counterfactual", "memory_answer", "key_facts") if k in exp}
    key = hashlib.sha256(json.dumps([instruction, context], ensure_ascii=False).encode()).hexdigest()[:16]
    return Example(id=key, source="mlflow", kind="grounded" if context else "instruction", instruction=instruction,
                   response=str(reference or ""), context=context, task=str(task), constraints=list(constraints),
                   meta=meta)


def answer_text(outputs: Any) -> str:
    """The answer in an MLflow row's outputs: a string, or a mapping's response / content / answer."""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, Mapping):
        for key in ("response", "content", "answer", "output", "text"):
            if isinstance(outputs.get(key), str):
                return outputs[key]
    if outputs is None:
        return ""
    return json.dumps(outputs, ensure_ascii=False, default=str)


# ------------------------------------------------------------------------------------- scorers
def judge_config(config: Any = None) -> JudgeConfig:
    """The judge section from a pipeline config, a JudgeConfig, a config file path, a mapping of
    the judge section, or None (the offline defaults)."""
    if config is None:
        return JudgeConfig()
    if isinstance(config, JudgeConfig):
        return config
    if isinstance(config, PipelineConfig):
        return config.judge
    if isinstance(config, str | os.PathLike) and Path(config).is_file():
        return configs.load_config(config).judge
    if isinstance(config, Mapping):
        return configs.validate(JudgeConfig, dict(config), "judge")
    raise TypeError(f"reset_scorers: expected a config file, PipelineConfig, JudgeConfig or judge mapping, "
                    f"got {config!r}")


_BUILT: dict[str, dict[str, Any]] = {}
_BUILT_LOCK = threading.Lock()


def _judges(cfg: JudgeConfig) -> dict[str, Any]:
    """The configured judges, built once per process and configuration (the LLM judges' ledger,
    budget and cache are shared by every call, as in the judge step)."""
    from reset.judging import build_judges

    key = cfg.model_dump_json()
    with _BUILT_LOCK:
        if key not in _BUILT:
            _BUILT[key] = {j.name: j for j in build_judges(cfg)}
        return _BUILT[key]


def _source(name: str, cfg: JudgeConfig):
    from mlflow.entities import AssessmentSource

    if name.startswith("llm-"):
        return AssessmentSource(source_type="LLM_JUDGE", source_id=cfg.llm.model or name)
    return AssessmentSource(source_type="CODE", source_id=f"reset.{name}")


def _feedback(name: str, value: Any, rationale: str, source, metadata: Mapping[str, str] | None = None):
    from mlflow.entities import Feedback

    return Feedback(name=name, value=value, rationale=rationale or None, source=source,
                    metadata={k: str(v) for k, v in (metadata or {}).items()} or None)


def judge_feedback(name: str, config: Any, inputs: Any, outputs: Any, expectations: Mapping[str, Any] | None = None):
    """One judge (a `judge.judges` name, or one of GATES) on one MLflow row: a Feedback, or None
    where the judge does not apply. Raises when the judge fails (MLflow records the error on the
    row: a failed LLM judgment is never a silent score)."""
    cfg = judge_config(config)
    example = example_of(inputs, expectations)
    text = answer_text(outputs)
    if name in GATES:
        from reset.judging.gates import gate_flags
        from reset.judging.lexical import check_answer

        flags = gate_flags(example, text)
        if name == "instructions_followed":
            if flags["if_pass"] is None:
                return None
            from reset import ifeval

            failed = [c["id"] for c in example.constraints if not ifeval.check(c, text, prompt=example.instruction)]
            why = (f"all {len(example.constraints)} instructions followed" if not failed
                   else f"not followed: {', '.join(failed)}")
            return _feedback(name, bool(flags["if_pass"]), why, _source("rules", cfg), {"axis": "instruction"})
        if flags["answer_correct"] is None:
            return None
        check = check_answer(example, text)
        return _feedback(name, bool(flags["answer_correct"]), f"outcome: {check.outcome or 'answered'}"
                         f"{f', passage copy {check.copy:.2f}' if check.copy is not None else ''}",
                         _source("reference", cfg), {"axis": "faithfulness"})
    if name == "reference" and not example.response.strip():
        return None  # no reference answer to compare with
    judge = _judges(cfg).get(name)
    if judge is None:
        raise ValueError(f"judge {name!r} is not configured (judge.judges: {cfg.judges})")
    result = judge.score([(example, Candidate(id=f"{example.id}/mlflow", example_id=example.id, text=text))])[0]
    if getattr(result, "error", ""):
        raise RuntimeError(f"{name}: {result.error}")
    if result.score is None:
        return None
    meta = {"axis": JUDGE_AXES.get(name, ""), "judge": name}
    if name.startswith("llm-"):
        meta.update(rubric=f"{judge.rubric.id}@{judge.rubric.version}", cached=bool(getattr(result, "cached", False)),
                    raw_score=getattr(result, "raw_score", ""))
    return _feedback(name, float(result.score), result.rationale, _source(name, cfg), meta)


_DESCRIPTIONS = {
    "rules": "IFEval's own checkers (strict): share of the example's verifiable instructions followed",
    "k-precision": "K-Precision: share of the answer's content words found in the context",
    "embedding": "each answer sentence's best MiniLM cosine against the context's sentences",
    "nli": "SummaC-ZS: sentence-level entailment minus contradiction of an NLI model",
    "reference": "token F1 (extractive) or ROUGE-L (abstractive, open) against the reference, times the gold "
                 "answer's recall",
    "instructions_followed": "pass / fail: every IFEval instruction followed (strict), the gate of selection",
    "answer_correct": "pass / fail: the extractive answer is the passage's (not the memory answer, not a copy)",
}


def _description(name: str, cfg: JudgeConfig) -> str:
    if name.startswith("llm-"):
        from reset.judging.llm.prompts import RUBRICS

        rubric = RUBRICS[name.removeprefix("llm-")]
        return (f"LLM judge {cfg.llm.model} at {cfg.llm.base_url}, rubric {rubric.id}@{rubric.version} (1-10 -> 0-1; "
                f"cache {cfg.llm.cache_path or 'off'}, budget {cfg.llm.budget_usd or 'none'} USD): "
                + rubric.task)
    return f"ReSet judge {name}: {_DESCRIPTIONS.get(name, name)}"


def _serialized(name: str, cfg: Mapping[str, Any], description: str) -> dict[str, Any]:
    """The scorer as MLflow stores a `@scorer` function: its body imports this module."""
    from dataclasses import asdict

    from mlflow.genai.scorers.base import SerializedScorer

    body = ("from reset.genai import judge_feedback\n"
            f"return judge_feedback({name!r}, {dict(cfg)!r}, inputs, outputs, expectations)")
    return asdict(SerializedScorer(name=name, description=description, aggregations=["mean"],
                                   call_source=body, call_signature="(inputs, outputs, expectations=None)",
                                   original_func_name="reset_" + name.replace("-", "_")))


def reset_scorers(config: Any = None, *, gates: bool = True) -> list[Any]:
    """MLflow scorers for the configured judges (and, with `gates`, the pass / fail facts
    instructions_followed and answer_correct): `mlflow.genai.evaluate(data=..., scorers=reset_scorers(cfg))`.
    `config`: a config file, a PipelineConfig, a JudgeConfig, a judge-section mapping, or None."""
    from mlflow.genai.scorers import scorer

    cfg = judge_config(config)
    dumped = cfg.model_dump(mode="json")
    out = []
    for name in [*cfg.judges, *(GATES if gates else ())]:
        description = _description(name, cfg)

        def fn(inputs, outputs, expectations=None, _name=name):
            return judge_feedback(_name, cfg, inputs, outputs, expectations)

        s = scorer(fn, name=name, description=description, aggregations=["mean"])
        object.__setattr__(s, "_cached_dump", _serialized(name, dumped, description))
        out.append(s)
    return out


# ---------------------------------------------------------------------------- the Judges page
@contextlib.contextmanager
def _trusted_local_store(uri: str) -> Iterator[None]:
    """MLflow refuses to register code-defined scorers unless MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS
    says the store may hold them (a remote server decides for itself). On a local store, which is
    this process's own file, our scorers (this library's code, nothing from elsewhere) are
    registered with it set for the call; running them from the UI still needs a server started
    with it."""
    key = "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS"
    if not is_local_store(uri) or os.environ.get(key):
        yield
        return
    os.environ[key] = "true"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _stored_definitions(experiment_id: str) -> dict[str, str]:
    """name -> the code of each scorer registered in the experiment (its latest version), read
    without running anything (MLflow's list_scorers rebuilds code-defined scorers by executing them)."""
    import mlflow

    store = mlflow.MlflowClient()._tracking_client.store
    return {sv.scorer_name: sv.serialized_scorer.call_source or "" for sv in store.list_scorers(experiment_id)}


def register_judges(config: Any, experiment_id: str) -> tuple[list[str], str]:
    """Register `reset_scorers(config)` in the experiment (MLflow's Judges page), each only when
    its definition changed: (names registered now, a note: "" or why the server refused)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    try:
        stored = _stored_definitions(experiment_id)
    except Exception:  # noqa: BLE001 - a store without scorers: registering says why below
        stored = {}
    done = []
    with _trusted_local_store(uri):
        for s in reset_scorers(config):
            if stored.get(s.name) == s.model_dump()["call_source"]:
                continue
            try:
                s.register(name=s.name, experiment_id=experiment_id)
            except MlflowException as exc:
                if "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS" in str(exc):
                    return done, ("the MLflow server refuses code-defined judges (start it with "
                                  "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS=true to list ours on its Judges page); every "
                                  "trace still carries their assessments")
                raise
            done.append(s.name)
    return done, ""


# -------------------------------------------------------------------------- evaluation dataset
def evaluation_dataset(examples: Sequence[Example], *, split: str, digest: str, experiment_id: str):
    """The held-out split as an MLflow evaluation dataset, named by its SHA-256
    (`reset-<split>-<sha256[:12]>`, tagged reset.sha256): made once, reused by every run that
    evaluates on the same split."""
    from mlflow.genai.datasets import create_dataset, search_datasets

    name = f"reset-{split}-{digest[:12]}"
    found = [d for d in search_datasets(filter_string=f"name = '{name}'", max_results=10) if d.name == name]
    for ds in found:
        if len(ds.to_df()) == len(examples):
            if experiment_id not in (ds.experiment_ids or []):
                from mlflow.genai.datasets import add_dataset_to_experiments

                ds = add_dataset_to_experiments(ds.dataset_id, [experiment_id])
            return ds
    ds = create_dataset(name=name, experiment_id=experiment_id,
                        tags={DATASET_TAG: digest, "reset.split": split, "reset.examples": str(len(examples))})
    records = [record_of(e) for e in examples]
    for i in range(0, len(records), 500):
        ds.merge_records(records[i : i + 500])
    return ds


# ----------------------------------------------------------------------------- evaluation runs
def _assessments(row: Mapping[str, Any], judges: Sequence[str], cfg: JudgeConfig) -> list[Any]:
    """The Feedback objects of one evaluation row: each judge's value and rationale as computed by
    the evaluation (no re-scoring), then the pass / fail facts and the gated faithfulness."""
    from mlflow.entities import AssessmentSource

    out = []
    for name in judges:
        value = row.get(f"judge.{name}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out.append(_feedback(name, float(value), str(row.get(f"why.{name}") or ""), _source(name, cfg),
                             {"axis": JUDGE_AXES.get(name, ""), "judge": name}))
    evaluation = AssessmentSource(source_type="CODE", source_id="reset.evaluation")
    for name, field in ROW_FACTS:
        value = row.get(field)
        if value is None:
            continue
        value = bool(value) if isinstance(value, bool) else float(value)
        out.append(_feedback(name, value, _fact_rationale(name, row), evaluation))
    return out


def _fact_rationale(name: str, row: Mapping[str, Any]) -> str:
    """Why an evaluation row's pass / fail fact (or gated faithfulness) is what it is, in words."""
    if name == "instructions_followed":
        failed = [i for i, ok in zip(row.get("if_ids") or [], row.get("if_followed") or [], strict=False) if not ok]
        n = len(row.get("if_ids") or [])
        return f"all {n} IFEval instructions followed (strict)" if not failed else f"not followed: {', '.join(failed)}"
    copy = row.get("passage_copy")
    copied = f", passage copy {copy:.2f}" if isinstance(copy, int | float) else ""
    if name == "answer_correct":
        outcome = row.get("cf_outcome")
        return (f"{'the passage' if row.get('answer_correct') else 'not the passage'}'s answer"
                f"{f' (counterfactual passage: {outcome})' if outcome else ''}{copied}")
    judges = row.get("faith_judges")
    why = f"the faithfulness judges' score {judges:.2f}" if isinstance(judges, int | float) else "no judge score"
    return why + (": 0, the extractive answer is not the passage's" if row.get("answer_correct") is False else "")


def _metrics_of(feedbacks: Sequence[Sequence[Any]]) -> dict[str, float]:
    """`<assessment>/mean` over the rows it applies to, as mlflow.genai.evaluate logs them."""
    sums: dict[str, list[float]] = {}
    for row in feedbacks:
        for fb in row:
            sums.setdefault(fb.name, []).append(float(fb.value))
    return {f"{name}/mean": sum(v) / len(v) for name, v in sums.items()}


def trace_rows(model: str, rows: Sequence[Mapping[str, Any]], examples: Mapping[str, Example],
               judges: Sequence[str], cfg: JudgeConfig, run_id: str) -> dict[str, float]:
    """One trace per row, linked to run `run_id`: the prompt (inputs), the answer (outputs), each
    judge's assessment and the expectations; returns the run's `<assessment>/mean` metrics."""
    import mlflow
    from mlflow.entities import AssessmentSource, SpanType
    from mlflow.tracing.constant import AssessmentMetadataKey

    per_row = []
    ref_source = AssessmentSource(source_type="CODE", source_id="reset.data")
    for i, row in enumerate(rows):
        ex = examples[row["example_id"]]
        record = record_of(ex)
        feedbacks = _assessments(row, judges, cfg)
        per_row.append(feedbacks)
        with mlflow.start_span(name=model, span_type=SpanType.LLM, run_id=run_id) as span:
            span.set_inputs(record["inputs"])
            span.set_outputs(row.get("response", ""))
            mlflow.update_current_trace(tags={"reset.model": model, "reset.example_id": ex.id, "reset.kind": ex.kind,
                                              "reset.task": ex.task, "reset.source": ex.source})
            run_meta = {AssessmentMetadataKey.SOURCE_RUN_ID: run_id}
            for fb in feedbacks:  # the active trace: kept in memory, written with the trace in one call
                fb.metadata = {**(fb.metadata or {}), **run_meta}
                mlflow.log_assessment(trace_id=span.trace_id, assessment=fb)
            for key, value in record["expectations"].items():
                if key in ("expected_response", "constraints", "answer"):
                    mlflow.log_expectation(trace_id=span.trace_id, name=key, value=value, source=ref_source,
                                           metadata=run_meta)
        if (i + 1) % FLUSH_EVERY == 0:
            mlflow.flush_trace_async_logging()
    mlflow.flush_trace_async_logging()
    return _metrics_of(per_row)


def log_evaluation(cfg: PipelineConfig, rows_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
                   results: Mapping[str, Mapping[str, float]], examples: Sequence[Example], *, digest: str,
                   payload: Mapping[str, Any], step_run) -> dict[str, str]:
    """The evaluate step's figures where MLflow users look: the split as an evaluation dataset, one
    evaluation run per model (its figures, with the intervals, as metrics; `<judge>/mean` over its
    traces; one trace per example with every assessment when tracking.evaluation_traces), the
    report linked from each, and our judges on the Judges page. Returns model -> run id.

    The evaluation runs are top-level runs of the experiment, tagged with the step's and the
    pipeline's runs (reset.evaluate_run, reset.pipeline_run): MLflow's Evaluation runs page lists
    every run of an experiment as a tree, and a run nested two levels under the pipeline's shows
    there without its name and never matches a search. They carry the local process's identity, as
    step runs do, so a run killed while writing them is marked KILLED by the next run's cleanup."""
    import mlflow

    from reset import procs

    exp = step_run.info.experiment_id
    split = cfg.evaluate.split
    dataset = evaluation_dataset(examples, split=split, digest=digest, experiment_id=exp)
    by_id = {e.id: e for e in examples}
    judges = [n for n in cfg.judge.judges if any(f"judge.{n}" in r for rows in rows_by_model.values() for r in rows)]
    step_id = step_run.info.run_id
    link = f"#/experiments/{exp}/runs/{step_id}/artifacts/report.html"
    summary = payload.get("summary") or {}
    verdicts = list(payload.get("verdicts", []))
    client = mlflow.MlflowClient()
    runs = {}
    for name, rows in rows_by_model.items():
        tags = {**RUN_TYPE, "reset.model": name, tracking.STEP_TAG: f"evaluate/{name}",
                REPORT_TAG: f"runs:/{step_id}/report.html", "reset.evaluate_run": step_id,
                "reset.pipeline_run": step_run.data.tags.get("mlflow.parentRunId", ""),
                "mlflow.note.content": _description_of_run(name, summary, verdicts, payload, link, split, digest),
                **tracking.local_tags(procs.identity() if procs.driver() else None)}
        run_id = client.create_run(exp, run_name=f"eval-{name}", tags=tags).info.run_id
        status = "FAILED"
        try:
            metrics = {**tracking.numeric(results.get(name, {})),
                       **{k.removeprefix(f"{name}."): v for k, v in _flat(summary, name).items()}}
            _log_dataset(client, run_id, dataset)
            if cfg.tracking.evaluation_traces:
                metrics.update(trace_rows(name, rows, by_id, judges, cfg.judge, run_id))
            _log_metrics(client, run_id, metrics)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            with contextlib.suppress(Exception):  # keep the step's own error
                client.set_terminated(run_id, status)
        runs[name] = run_id
    registered, note = register_judges(cfg.judge, exp)
    if registered:
        print(f"[evaluate] MLflow Judges page: registered {', '.join(registered)}", flush=True)
    if note:
        print(f"[evaluate] {note}", flush=True)
    return runs


def _log_metrics(client, run_id: str, metrics: Mapping[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(float(v))]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])


def _log_dataset(client, run_id: str, dataset) -> None:
    """The evaluation dataset as the run's input (what the Dataset column shows); once more when
    another run inserted the same dataset row between MLflow's lookup and its insert."""
    import time

    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    entry = DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "evaluation")])
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=[entry])
            return
        except MlflowException as e:
            if not duplicate_row(e) or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _flat(summary: Mapping[str, Any], arm: str) -> dict[str, float]:
    """The arm's primary figures with their intervals and its comparison with the reference, from
    the summary's dict (flat_metrics' names: <arm>.<key>.low, <arm>.vs_<ref>.<key>.p, ...)."""
    from reset.evaluation.metrics import PRIMARY

    out: dict[str, float] = {}
    for key in PRIMARY:
        e = (summary.get("estimates", {}).get(arm) or {}).get(key)
        if e:
            for part in ("low", "high"):
                if isinstance(e.get(part), int | float) and math.isfinite(e[part]):
                    out[f"{arm}.{key}.{part}"] = e[part]
        t = (summary.get("comparisons", {}).get(arm) or {}).get(key)
        if t:
            ref = summary.get("reference")
            for part, src in (("diff", "diff"), ("low", "low"), ("high", "high"), ("p", "p_value")):
                if isinstance(t.get(src), int | float) and math.isfinite(t[src]):
                    out[f"{arm}.vs_{ref}.{key}.{part}"] = t[src]
    return out


def _description_of_run(name: str, summary: Mapping[str, Any], verdicts: Sequence[str], payload: Mapping[str, Any],
                        link: str, split: str, digest: str) -> str:
    """The run's description (Markdown): its two axes with intervals, the verdict, the report."""
    from reset.evaluation.metrics import PRIMARY

    label = (summary.get("labels") or {}).get(name, name)
    lines = [f"**{label}** on the {split} split (sha256 `{digest[:12]}`), every figure with its 95% interval:", ""]
    for key in PRIMARY:
        e = (summary.get("estimates", {}).get(name) or {}).get(key)
        if e and e.get("n"):
            lines.append(f"- {key}: {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}] (n={e['n']})")
    mine = [v for v in verdicts if v.startswith(f"{label} vs ")]
    lines += ["", *mine] if mine else []
    if payload.get("decision"):
        lines += ["", f"Decision: {payload['decision']}"]
    body = "\n".join(lines).replace("[", "\\[").replace("]", "\\]")  # intervals, not Markdown links
    return body + f"\n\nThe paired statistics (MLflow's means have no intervals): [report.html]({link})."


# ---------------------------------------------------------------------------- the run's context
def pipeline_context(run) -> dict[str, Any]:
    """What a step's card needs from the pipeline around it: the parent run's whole config
    (config.json) and the mix step's data card (data_card/data_card.json); empty where absent."""
    import mlflow

    out: dict[str, Any] = {}
    parent = run.data.tags.get("mlflow.parentRunId", "")
    if not parent:
        return out
    client = mlflow.MlflowClient()
    with contextlib.suppress(Exception):
        out["config"] = mlflow.artifacts.load_dict(f"runs:/{parent}/config.json")
    with contextlib.suppress(Exception):
        mix = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and "
                                 f"tags.`{tracking.STEP_TAG}` = 'mix'", max_results=1)
        if mix:
            out["data_card"] = mlflow.artifacts.load_dict(f"runs:/{mix[0].info.run_id}/data_card/data_card.json")
    return out


# ------------------------------------------------------------------------------- the cards
def model_card_for(run, model_dir: str, payload: Mapping[str, Any], cfg: PipelineConfig, candidate: str) -> str:
    """The registered model's card (reset.cards) from the evaluate step's payload, the checkpoint's
    provenance and the pipeline around the step's run; also logged as model_card/README.md."""
    import mlflow

    from reset.cards import model_card
    from reset.models.loading import read_provenance

    card = model_card(model_name=cfg.register.model_name, provenance=read_provenance(model_dir), evaluation=payload,
                      candidate=candidate, context=pipeline_context(run), run_id=run.info.run_id)
    mlflow.log_text(card, "model_card/README.md")
    return card


def dataset_card_for(run, selected_path: str, candidates, judgments, report: Mapping[str, Any],
                     cfg: PipelineConfig, out_card: str = "") -> str:
    """The selected set's dataset card (reset.cards), logged beside a copy of the set
    (selected_set/selected.jsonl + README.md: a dataset repository's layout) and written to `out_card`."""
    import mlflow

    from reset.cards import dataset_card
    from reset.data.records import read_jsonl

    selected, _ = read_jsonl(selected_path, Example)
    card = dataset_card(selected, candidates, judgments, report, select=cfg.select, generate=cfg.generate,
                        context=pipeline_context(run))
    mlflow.log_text(Path(selected_path).read_text(encoding="utf-8"), "selected_set/selected.jsonl")
    mlflow.log_text(card, "selected_set/README.md")
    if out_card:
        Path(out_card).parent.mkdir(parents=True, exist_ok=True)
        Path(out_card).write_text(card, encoding="utf-8")
    return card
