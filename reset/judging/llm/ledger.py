"""Counters, token and cost accounting, and the hard budget shared by LLM judges built together."""

from __future__ import annotations

import threading
from typing import Any

from reset.config import LLMJudgeConfig

_COUNTERS = (
    "requests", "retries", "cache_hits", "deduplicated", "judged", "errors", "parse_failures",
    "structured_fallbacks", "rate_limited", "server_errors", "timeouts", "connection_errors",
    "prompt_tokens", "completion_tokens", "usage_missing",
)


class Ledger:
    """Counters, token/cost accounting and the hard budget, shared by the judges built together."""

    def __init__(self, cfg: LLMJudgeConfig):
        self.cfg = cfg
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.cost_usd = 0.0
        self.reserved_usd = 0.0
        self.prompt_chars_billed = 0
        self.responses_with_usage = 0
        self.stop_reason = ""

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def _price(self, prompt_tokens: float, completion_tokens: float) -> float:
        c = self.cfg
        return (
            prompt_tokens * c.price_per_1k_prompt_tokens + completion_tokens * c.price_per_1k_completion_tokens
        ) / 1000

    def estimate(self, prompt_chars: int) -> float:
        with self._lock:
            per_char = self.counts["prompt_tokens"] / self.prompt_chars_billed if self.prompt_chars_billed else 0.25
            completion = (
                self.counts["completion_tokens"] / self.responses_with_usage
                if self.responses_with_usage
                else self.cfg.max_tokens
            )
        return self._price(prompt_chars * per_char, completion)

    def admit(self, prompt_chars: int) -> float | None:
        """Reserve one request; its estimated cost, or None (and the stop reason set) when over budget."""
        est = self.estimate(prompt_chars)
        c = self.cfg
        with self._lock:
            if self.stop_reason:
                return None
            if c.max_requests and self.counts["requests"] >= c.max_requests:
                self.stop_reason = f"max_requests ({c.max_requests}) reached"
                return None
            if c.budget_usd and self.cost_usd + self.reserved_usd + est > c.budget_usd:
                self.stop_reason = (
                    f"budget_usd {c.budget_usd:g} would be exceeded (spent {self.cost_usd:.6f}, in flight "
                    f"{self.reserved_usd:.6f}, next ~{est:.6f})"
                )
                return None
            self.counts["requests"] += 1
            self.reserved_usd += est
            return est

    def settle(self, est: float, prompt_chars: int, usage: Any | None) -> None:
        """Release a reservation; charge the usage of a response (None = no response)."""
        pt = getattr(usage, "prompt_tokens", None) if usage is not None else None
        ct = getattr(usage, "completion_tokens", None) if usage is not None else None
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - est)
            if usage is None:
                return
            if pt is None and ct is None:
                self.counts["usage_missing"] += 1
                self.cost_usd += est  # no usage reported: charge the estimate
                return
            self.counts["prompt_tokens"] += int(pt or 0)
            self.counts["completion_tokens"] += int(ct or 0)
            self.prompt_chars_billed += prompt_chars
            self.responses_with_usage += 1
            self.cost_usd += self._price(pt or 0, ct or 0)

    def stats(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = dict(self.counts)
            out["cost_usd"] = round(self.cost_usd, 8)
            out["budget_stopped"] = int(bool(self.stop_reason))
        return out
