"""An LLM judge over any OpenAI-compatible chat endpoint (vLLM, KServe, hosted APIs).

    cfg = LLMJudgeConfig(base_url="http://vllm:8000/v1", model="Qwen/Qwen2.5-7B-Instruct",
                         cache_path="runs/judge-cache.sqlite")      # reset.config
    judges = llm_judges(cfg)            # one LLMJudge per axis in cfg.axes, sharing one budget
    judge = build_judge("faithfulness", {"base_url": ..., "model": ...})   # from a config mapping
    scores = judges[0].score(pairs)     # list[AxisScore], like every Judge in reset.judge
    judges[0].stats()                   # requests, retries, cache hits, tokens, cost (no secrets)

Each axis has a rubric prompt (instruction following: does the response follow every instruction
in the request? faithfulness: is every claim supported by the context?) asking for a JSON object
{"rationale": ..., "score": 1-10}; the score maps to [0, 1] as (s - 1) / 9.

Prompt injection: the request, context and response go into the user message as data, each inside
<data-NONCE> ... </data-NONCE> tags. The nonce is a hash of the (cleaned) material, so it is
unpredictable to whoever wrote the material yet stable across runs (the cache is keyed on the full
prompt). Anything that looks like a data tag is removed from the material first (repeatedly, so
nested fragments cannot re-form one), so the material can neither close its block nor open another.
The system prompt, the same for every request (good for prefix caching), says that text inside data
tags is material to evaluate, never instructions.

Robustness: bounded concurrency (asyncio + a semaphore around AsyncOpenAI, whose own retries are
off); retries with exponential backoff and jitter on 429, 408, 5xx, timeouts, connection errors
and unparseable replies (Retry-After / retry-after-ms honoured); no retry on other 4xx, except that
a 400 to a request carrying `response_format` is retried once without it (prompt-only JSON), and
structured output then stays off for that judge. 401/403/404 raise LLMJudgeError at once (a wrong
key, model or URL fails every request), and so do max(3, concurrency) judgments in a row that
exhaust their retries on transport errors with no success between them (the endpoint is down).
A judgment that still fails after max_retries is an error record (LLMAxisScore with score None
and `error` set), never a silent 0, and is not cached.

Cache: SQLite (WAL, busy timeout, a lock per connection) keyed by sha256 of (model, rubric id and
version, axis, full prompt): a re-run, or a duplicate prompt within a run, sends nothing twice.
Cache hits cost nothing.

Budget: before each request (retries included) the judge checks max_requests and whether the money
spent, plus the estimates of requests in flight, plus an estimate of this one (prompt tokens from
the prompt length at the observed tokens-per-character, completion tokens at the observed mean;
max_tokens before any usage was seen) would exceed budget_usd. If so it sends nothing more, lets
the requests in flight finish (and be cached) and raises BudgetExceeded with the partial results
and the stats; a re-run with a higher budget resumes from the cache. Judges built by llm_judges()
share one budget and one set of counters.

The API key is read from the environment variable *named* by api_key_env at each score() call
("EMPTY" when unset, as local vLLM servers accept); it is never stored on the judge, in the config,
the stats, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from reset.config import LLM_AXES, ConfigError, LLMJudgeConfig, validate
from reset.judging.base import AxisScore, Pair
from reset.judging.llm.cache import JudgeCache, cache_key
from reset.judging.llm.ledger import Ledger
from reset.judging.llm.parsing import ParseError, parse_judgment, to_unit
from reset.judging.llm.prompts import JSON_SCHEMA, RUBRICS, build_prompt
from reset.judging.llm.tracing import CallTrace, RequestFacts
from reset.judging.llm.tracing import enabled as tracing_enabled

log = logging.getLogger(__name__)

_RETRY_AFTER_CAP_S = 300.0


# ----------------------------------------------------------------------------------------- results
@dataclass
class LLMAxisScore(AxisScore):
    """An AxisScore with the judge's raw 1-10 score; `error` set (and score None) when the
    judgment failed after every retry."""

    raw_score: float | None = None
    error: str = ""
    cached: bool = False


class LLMJudgeError(RuntimeError):
    """A failure that no retry can fix (wrong key, model or URL)."""


class BudgetExceeded(RuntimeError):
    """The budget (budget_usd or max_requests) would be exceeded by the next request.

    results: one entry per pair given to score(): an AxisScore, or None where not judged yet.
    stats: the judge's stats() at the stop. Finished judgments are in the cache."""

    def __init__(self, reason: str, results: list[AxisScore | None], stats: dict[str, float]):
        done = sum(r is not None for r in results)
        super().__init__(
            f"LLM judge stopped: {reason}; {done}/{len(results)} judged (finished judgments are cached: "
            "re-run with a higher budget to resume)"
        )
        self.reason = reason
        self.results = results
        self.stats = stats


# ------------------------------------------------------------------------------------------- judge
@dataclass
class _Job:
    key: str
    system: str
    user: str
    indices: list[int]


class _Fatal(Exception):
    pass


class LLMJudge:
    """A Judge (reset.judge) scoring one axis with an LLM. faithfulness: None where the example has
    no context; instruction: every example."""

    def __init__(
        self,
        cfg: LLMJudgeConfig,
        axis: str = "instruction",
        *,
        ledger: Ledger | None = None,
        cache: JudgeCache | None = None,
    ):
        require_endpoint(cfg)
        if axis not in LLM_AXES:
            raise ValueError(f"axis {axis!r} is not one of {list(LLM_AXES)}")
        self.cfg = cfg
        self.axis = axis
        self.name = f"llm-{axis}"
        self.rubric = RUBRICS[axis]
        self.ledger = ledger or Ledger(cfg)
        self.cache = cache if cache is not None else (JudgeCache(cfg.cache_path) if cfg.cache_path else None)
        self._structured = cfg.structured_output
        self._give_up_streak = 0
        self.log: Any = print  # progress lines on long runs (about every 5% of the requests)
        self.trace: bool | None = None  # MLflow traces of each score() call (None: where MLflow is in use)

    def __repr__(self) -> str:
        return f"LLMJudge(axis={self.axis!r}, model={self.cfg.model!r}, rubric={self.rubric.id}@{self.rubric.version})"

    def stats(self) -> dict[str, float]:
        """Counters for MLflow (all numeric, no secrets); shared by judges with the same ledger."""
        return self.ledger.stats()

    # ------------------------------------------------------------------------------------ public
    def score(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        """Synchronous wrapper around ascore (runs its own event loop, in a worker thread when
        called from inside a running loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(pairs))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.ascore(pairs)).result()

    async def ascore(self, pairs: Sequence[Pair]) -> list[AxisScore]:
        call = CallTrace(self, len(pairs)) if (tracing_enabled() if self.trace is None else self.trace) else None
        stopped = "not finished"
        try:
            out = await self._ascore(pairs, call)
            stopped = ""
            return out
        except BudgetExceeded as exc:
            stopped = exc.reason
            raise
        except BaseException as exc:
            stopped = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise
        finally:
            if call is not None:
                call.emit(stopped)

    async def _ascore(self, pairs: Sequence[Pair], call: CallTrace | None) -> list[AxisScore]:
        results: list[AxisScore | None] = [None] * len(pairs)
        jobs: dict[str, _Job] = {}
        for i, (ex, cand) in enumerate(pairs):
            if self.axis == "faithfulness" and not ex.has_context:
                results[i] = AxisScore(None, "no context")
                continue
            system, user = build_prompt(self.axis, ex, cand)
            key = cache_key(self.cfg.model, self.rubric, self.axis, system, user)
            if key in jobs:
                jobs[key].indices.append(i)
                self.ledger.add("deduplicated")
                if call is not None:
                    call.deduplicated += 1
            else:
                jobs[key] = _Job(key, system, user, [i])
        if self.cache is not None and jobs:
            for key, (raw, why) in self.cache.get_many(list(jobs)).items():
                job = jobs.pop(key)
                for i in job.indices:
                    results[i] = LLMAxisScore(to_unit(raw), why, raw_score=raw, cached=True)
                self.ledger.add("cache_hits", len(job.indices))
                if call is not None:
                    call.cache_hits += len(job.indices)
        if jobs:
            await self._run(list(jobs.values()), results, call)
        if self.ledger.stop_reason and any(r is None for r in results):
            raise BudgetExceeded(self.ledger.stop_reason, results, self.stats())
        return [r for r in results if r is not None]

    # ---------------------------------------------------------------------------------- internals
    async def _run(self, jobs: list[_Job], results: list[AxisScore | None], call: CallTrace | None = None) -> None:
        import openai

        api_key = os.environ.get(self.cfg.api_key_env) or "EMPTY"
        client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url, api_key=api_key, max_retries=0, timeout=self.cfg.timeout_s
        )
        del api_key
        sem = asyncio.Semaphore(self.cfg.concurrency)
        total, done, t0 = len(jobs), 0, time.monotonic()
        every = max(1, total // 20)

        async def one(job: _Job) -> None:
            nonlocal done
            async with sem:
                res = await self._judge_one(client, job, call)
            if res is not None:
                for i in job.indices:
                    results[i] = res
            done += 1
            if total >= 50 and (done % every == 0 or done == total):
                st = self.ledger.stats()
                rate = done / max(time.monotonic() - t0, 1e-9)
                self.log(
                    f"[{self.name}] {done}/{total} requests done, {rate:.1f}/s, retries {st['retries']:.0f}, "
                    f"errors {st['errors']:.0f}, cost ${st['cost_usd']:.4f}"
                )

        self._give_up_streak = 0
        try:
            async with asyncio.TaskGroup() as tg:
                for job in jobs:
                    tg.create_task(one(job))
        except BaseExceptionGroup as group:
            fatal = [e for e in group.exceptions if isinstance(e, _Fatal)]
            if fatal:
                raise LLMJudgeError(str(fatal[0])) from None
            raise group.exceptions[0] from None
        finally:
            await client.close()

    def _delay(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, _RETRY_AFTER_CAP_S) * random.uniform(1.0, 1.1)
        d = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (failures - 1))
        return d / 2 + random.uniform(0, d / 2)

    async def _judge_one(self, client: Any, job: _Job, call: CallTrace | None = None) -> LLMAxisScore | None:
        """The judgment of one prompt; None when the budget stopped it first. With `call`, what its
        requests did is recorded for the call's trace."""
        messages = [{"role": "system", "content": job.system}, {"role": "user", "content": job.user}]
        facts = RequestFacts() if call is not None else None
        result = None
        try:
            result = await self._attempts(client, job, messages, facts)
            return result
        finally:
            if call is not None and facts is not None and facts.attempts:
                call.request(job.key, messages, facts, result)

    async def _attempts(self, client: Any, job: _Job, messages: list[dict[str, str]],
                        facts: RequestFacts | None) -> LLMAxisScore | None:
        import openai

        cfg, ledger = self.cfg, self.ledger
        chars = len(job.system) + len(job.user)
        structured = self._structured
        failures = 0
        last_error = ""
        while True:
            est = ledger.admit(chars)
            if est is None:
                return None
            extra = {"response_format": JSON_SCHEMA} if structured else {}
            retry_after: float | None = None
            usage = None
            try:
                resp = await client.chat.completions.create(
                    model=cfg.model,
                    messages=messages,
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    **extra,
                )
                usage = getattr(resp, "usage", None) or _NO_USAGE
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status == 400 and structured:
                    structured = False
                    ledger.add("structured_fallbacks")
                    log.info(
                        "llm judge: %s rejected response_format (400); falling back to prompt-only JSON", cfg.model
                    )
                    continue
                if status in (401, 403, 404):
                    raise _Fatal(f"{cfg.model} at {_safe_url(cfg.base_url)}: HTTP {status}: {_message(exc)}") from None
                if status not in (408, 409, 429) and status < 500:
                    return self._error(job, f"HTTP {status}: {_message(exc)}")
                ledger.add("rate_limited" if status == 429 else "server_errors")
                retry_after = _retry_after(exc.response.headers)
                last_error = f"HTTP {status}"
            except openai.APITimeoutError:
                ledger.add("timeouts")
                last_error = f"timeout after {cfg.timeout_s:g}s"
            except openai.APIConnectionError as exc:
                ledger.add("connection_errors")
                last_error = f"connection error: {type(exc.__cause__ or exc).__name__}"
            else:
                content = resp.choices[0].message.content if resp.choices else None
                if facts is not None:
                    facts.reply = content
                try:
                    raw, why = parse_judgment(content)
                except ParseError as exc:
                    ledger.add("parse_failures")
                    last_error = f"unparseable reply: {exc}"
                else:
                    if not structured and self._structured:
                        self._structured = False  # the fallback worked: stop sending response_format
                    if self.cache is not None:
                        self.cache.put(
                            job.key, cfg.model, f"{self.rubric.id}@{self.rubric.version}", self.axis, raw, why
                        )
                    ledger.add("judged")
                    self._give_up_streak = 0
                    return LLMAxisScore(to_unit(raw), why, raw_score=raw)
            finally:
                ledger.settle(est, chars, usage)
                if facts is not None:
                    facts.sent(usage, cfg)
                    facts.structured = structured
            failures += 1
            if facts is not None:
                facts.errors.append(last_error)
            if failures > cfg.max_retries:
                why = f"gave up after {failures} attempts; last: {last_error}"
                if not last_error.startswith("unparseable"):
                    # Circuit breaker: judgments giving up in a row with no success between them mean
                    # the endpoint is down; stop instead of spending every job's full backoff.
                    self._give_up_streak += 1
                    if self._give_up_streak >= max(3, cfg.concurrency):
                        raise _Fatal(
                            f"{_safe_url(cfg.base_url)} keeps failing: {self._give_up_streak} judgments in a row {why}"
                        )
                return self._error(job, why)
            ledger.add("retries")
            delay = 0.0 if last_error.startswith("unparseable") else self._delay(failures, retry_after)
            log.debug("llm judge: retry %d for %s in %.2fs (%s)", failures, job.key[:12], delay, last_error)
            if delay:
                await asyncio.sleep(delay)

    def _error(self, job: _Job, why: str) -> LLMAxisScore:
        self.ledger.add("errors")
        log.warning("llm judge (%s, %s): prompt %s failed: %s", self.cfg.model, self.axis, job.key[:12], why)
        return LLMAxisScore(None, f"LLM judge error: {why}", error=why)


class _NoUsage:
    prompt_tokens = None
    completion_tokens = None


_NO_USAGE = _NoUsage()


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
    return str(getattr(exc, "message", exc))[:200]


def _safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rsplit('@', 1)[-1]}{slash}{path}" if sep else url


def _retry_after(headers: Any) -> float | None:
    """Seconds from retry-after-ms / retry-after (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def require_endpoint(cfg: LLMJudgeConfig) -> None:
    """ConfigError naming judge.llm.base_url / .model when the endpoint is not configured."""
    try:
        cfg.require_endpoint()
    except ValueError as exc:
        raise ConfigError(f"judge.llm.{getattr(exc, 'key', '')}: {exc}") from None


def llm_judges(cfg: LLMJudgeConfig) -> list[LLMJudge]:
    """One LLMJudge per axis in cfg.axes, sharing one ledger (budget, counters) and one cache."""
    require_endpoint(cfg)
    ledger = Ledger(cfg)
    cache = JudgeCache(cfg.cache_path) if cfg.cache_path else None
    return [LLMJudge(cfg, axis, ledger=ledger, cache=cache) for axis in cfg.axes]


def build_judge(axis: str, cfg: LLMJudgeConfig | Mapping[str, Any]) -> LLMJudge:
    """An LLMJudge for `axis` from a config or its plain mapping (validated as `judge.llm`), with
    its own ledger and cache connection. Judges that must share one budget: `llm_judges(cfg)`
    (which reset.judging.build_judges uses)."""
    if not isinstance(cfg, LLMJudgeConfig):
        cfg = validate(LLMJudgeConfig, dict(cfg), "judge.llm")
    return LLMJudge(cfg, axis)
