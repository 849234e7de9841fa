"""MLflow traces of the LLM judge's work, so MLflow's Overview page shows its usage.

One trace per `LLMJudge.score` call (root span `llm-judge/<axis>`: how many pairs, cache hits,
duplicates, requests, retries, errors, tokens and cost), with one CHAT_MODEL child span per
request sent (its messages and reply, attempts, retries, token usage, cost, latency from the
first attempt to the last). Token usage and cost use MLflow's span attributes (mlflow.chat.tokenUsage,
mlflow.llm.cost), so the trace carries the totals the Overview page charts. Inside a scorer call of
`mlflow.genai.evaluate` with scorer tracing on, the root span is a child of the scorer's span.

Written only where MLflow is in use: mlflow imported and a tracking URI set (the pipeline's
steps set it; a bare script or a unit test writes nothing), and with `trace=False` never. The spans
are built after the call with their recorded times (the judge's hot loop only appends facts), and
the export queue is flushed every FLUSH_EVERY spans (MLflow drops spans when it overflows).
Nothing secret: the endpoint without user info, the model and rubric, the messages (the judged
material and the rubric), never the API key, which the judge never holds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

FLUSH_EVERY = 200


def enabled() -> bool:
    """Whether judge calls are traced: MLflow is in use in this process (imported, with a tracking
    URI set by the caller or MLFLOW_TRACKING_URI)."""
    if "mlflow" not in sys.modules:
        return False
    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

        return bool(is_tracking_uri_set())
    except Exception:  # noqa: BLE001 - tracing is best effort; judging goes on without it
        return False


@dataclass
class RequestFacts:
    """What one judgment's requests did (a request and its retries), recorded as it runs."""

    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_cost: float = 0.0
    output_cost: float = 0.0
    reply: str | None = None
    errors: list[str] = field(default_factory=list)
    structured: bool = True

    @property
    def cost_usd(self) -> float:
        return self.input_cost + self.output_cost

    def sent(self, usage: Any, cfg: Any) -> None:
        """One request sent; `usage` its response's (None: no response), priced as the ledger does."""
        self.attempts += 1
        pt = int(getattr(usage, "prompt_tokens", 0) or 0)
        ct = int(getattr(usage, "completion_tokens", 0) or 0)
        self.prompt_tokens += pt
        self.completion_tokens += ct
        self.input_cost += pt * cfg.price_per_1k_prompt_tokens / 1000
        self.output_cost += ct * cfg.price_per_1k_completion_tokens / 1000


@dataclass
class _Request:
    key: str
    messages: list[dict[str, str]]
    facts: RequestFacts
    score: float | None
    raw_score: float | None
    error: str


class CallTrace:
    """The facts of one score() call; `emit()` writes them as one trace."""

    def __init__(self, judge: Any, pairs: int):
        import mlflow

        self.judge = judge
        self.pairs = pairs
        self.start_ns = time.time_ns()
        self.cache_hits = 0
        self.deduplicated = 0
        self.requests: list[_Request] = []
        self.parent = mlflow.get_current_active_span()

    def request(self, key: str, messages: list[dict[str, str]], facts: RequestFacts, result: Any) -> None:
        facts.end_ns = time.time_ns()
        self.requests.append(_Request(key, messages, facts, getattr(result, "score", None),
                                      getattr(result, "raw_score", None), getattr(result, "error", "") or ""))

    def emit(self, stopped: str = "") -> None:
        """Write the trace (best effort: a tracking store that fails does not fail the judging)."""
        try:
            self._emit(stopped)
        except Exception as exc:  # noqa: BLE001
            import logging

            logging.getLogger(__name__).warning("llm judge: could not write its MLflow trace: %s", exc)

    def _emit(self, stopped: str) -> None:
        import mlflow
        from mlflow.entities import SpanType
        from mlflow.tracing.constant import SpanAttributeKey

        j = self.judge
        cfg = j.cfg
        rubric = f"{j.rubric.id}@{j.rubric.version}"
        endpoint = _safe_url(cfg.base_url)
        reqs = self.requests
        totals = {
            "pairs": self.pairs, "cache_hits": self.cache_hits, "deduplicated": self.deduplicated,
            "requests": sum(r.facts.attempts for r in reqs), "judgments_sent": len(reqs),
            "retries": sum(max(0, r.facts.attempts - 1) for r in reqs), "errors": sum(bool(r.error) for r in reqs),
            "prompt_tokens": sum(r.facts.prompt_tokens for r in reqs),
            "completion_tokens": sum(r.facts.completion_tokens for r in reqs),
            "cost_usd": round(sum(r.facts.cost_usd for r in reqs), 8),
        }
        attrs = {"reset.judge": j.name, "reset.axis": j.axis, "reset.rubric": rubric, "reset.endpoint": endpoint,
                 SpanAttributeKey.MODEL: cfg.model, **{f"reset.{k}": v for k, v in totals.items()}}
        tags = {"reset.judge": j.name, "reset.rubric": rubric, "reset.llm_model": cfg.model}
        root = mlflow.start_span_no_context(
            name=j.name, span_type=SpanType.EVALUATOR if self.parent is None else SpanType.CHAIN,
            parent_span=self.parent, inputs={"pairs": self.pairs, "axis": j.axis, "rubric": rubric, "model": cfg.model},
            attributes=attrs, tags=tags if self.parent is None else None, start_time_ns=self.start_ns)
        for i, r in enumerate(reqs):
            f = r.facts
            span = mlflow.start_span_no_context(
                name=f"{cfg.model} ({j.axis})", span_type=SpanType.CHAT_MODEL, parent_span=root,
                inputs={"messages": r.messages}, start_time_ns=f.start_ns,
                attributes={
                    SpanAttributeKey.MODEL: cfg.model, "reset.prompt_key": r.key[:16], "reset.attempts": f.attempts,
                    "reset.retries": max(0, f.attempts - 1), "reset.cached": False,
                    "reset.structured_output": f.structured,
                    "reset.latency_ms": round((f.end_ns - f.start_ns) / 1e6, 1),
                    "reset.raw_score": r.raw_score if r.raw_score is not None else "",
                    **({"reset.errors": "; ".join(f.errors[-3:])[:500]} if f.errors else {}),
                })
            if f.prompt_tokens or f.completion_tokens:
                span.set_attribute(SpanAttributeKey.CHAT_USAGE, {
                    "input_tokens": f.prompt_tokens, "output_tokens": f.completion_tokens,
                    "total_tokens": f.prompt_tokens + f.completion_tokens})
            if f.cost_usd:
                span.set_attribute(SpanAttributeKey.LLM_COST, {"input_cost": round(f.input_cost, 10),
                                                               "output_cost": round(f.output_cost, 10),
                                                               "total_cost": round(f.cost_usd, 10)})
            if r.error:
                span.set_status("ERROR")
            span.end(outputs={"reply": f.reply, "score": r.score, "error": r.error or None}, end_time_ns=f.end_ns)
            if (i + 1) % FLUSH_EVERY == 0:
                mlflow.flush_trace_async_logging()
        if stopped or totals["errors"]:
            root.set_status("ERROR")
        root.end(outputs={**totals, **({"stopped": stopped} if stopped else {})})
        if self.parent is None and len(reqs) >= FLUSH_EVERY:
            mlflow.flush_trace_async_logging()


def _safe_url(url: str) -> str:
    """The endpoint without user info or query (the config refuses credentials in it; twice safe)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rsplit('@', 1)[-1]}{slash}{path.split('?', 1)[0]}" if sep else url.split("?", 1)[0]
