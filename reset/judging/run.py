"""The judge step's work over files' worth of records: every candidate judged by the configured
judges, the gate facts selection needs attached, the LLM judges' ledgers read, the means per axis
and the judged-samples table (what the step logs to MLflow)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from reset.config import JudgeConfig
from reset.data.chunks import Resume, chunk_of, digest
from reset.data.records import Candidate, Example, Judgment, from_dict, to_row
from reset.judging.base import judge
from reset.judging.build import build_judges, close_judges
from reset.judging.gates import gate_flags

AXES = ("instruction", "faithfulness", "task")


@dataclass
class Judged:
    judgments: list[Judgment]
    judges: list[str]  # the judges' names
    axes: list[str]  # the axis each judge scores
    llm: list[dict[str, Any]] = field(default_factory=list)  # each LLM judge ledger's figures (once per ledger)
    reused: int = 0  # judgments taken from the chunks an earlier attempt finished (reset.data.chunks)

    def means(self) -> dict[str, float]:
        """Mean score per axis (over the judgments it applies to), the mean combined score, the count."""
        out: dict[str, float] = {}
        for axis in AXES:
            vals = [j.scores[axis] for j in self.judgments if j.scores.get(axis) is not None]
            if vals:
                out[f"mean_{axis}"] = sum(vals) / len(vals)
        n = len(self.judgments)
        out["mean_combined"] = sum(j.combined for j in self.judgments) / n if n else 0.0
        out["judgments"] = n
        return out


def judge_all(examples: Sequence[Example], candidates: Sequence[Candidate], cfg: JudgeConfig,
              cache_dir: str = "", resume: Resume | None = None) -> Judged:
    """Judge every candidate; each judgment carries the gate facts selection checks (an IF answer
    that breaks an instruction, an extractive answer wrong against its passage, a copy). In chunks
    of `judge.chunk_prompts` prompts' candidates; with `resume` (reset.data.chunks) each chunk is
    saved as it is judged and the chunks an earlier attempt with the same inputs judged are reused.
    The judgments come in the candidates' order."""
    order = {e.id: i for i, e in enumerate(examples)}
    judged_prompts = {ex_id: k for k, ex_id in enumerate(sorted({c.example_id for c in candidates},
                                                                key=lambda x: order.get(x, -1)))}
    chunks: dict[str, list[Candidate]] = {}
    for c in candidates:  # (an unknown example is reported by `judge`)
        chunks.setdefault(f"{chunk_of(judged_prompts[c.example_id], cfg.chunk_prompts):05d}", []).append(c)
    store = resume.store(judge_inputs(examples, candidates, cfg)) if resume else None
    by_cand: dict[str, Judgment] = {}
    for name in sorted(set(chunks) & (store.done if store else set())):
        by_cand.update({j.candidate_id: j for j in (from_dict(Judgment, row) for row in store.read(name))})
    reused = len(by_cand)
    judges = build_judges(cfg, cache_dir)
    try:
        by_ex = {e.id: e for e in examples}
        for name, part in sorted(chunks.items()):
            if store is not None and name in store.done:
                continue
            judgments = judge(examples, part, cfg.weights, judges, cfg.judge_weights)
            texts = {c.id: c.text for c in part}
            for j in judgments:
                j.details["gates"] = gate_flags(by_ex[j.example_id], texts[j.candidate_id])
            if store is not None:
                store.write(name, [asdict(j) for j in judgments])
            by_cand.update({j.candidate_id: j for j in judgments})
    finally:
        close_judges(judges)
    ledgers, seen = [], set()
    for j in judges:  # LLM judges: requests, retries, cache hits, tokens, cost (once per shared ledger)
        stats = getattr(j, "stats", None)
        ledger = id(getattr(j, "ledger", j))
        if callable(stats) and ledger not in seen:
            seen.add(ledger)
            ledgers.append(stats())
    return Judged([by_cand[c.id] for c in candidates], [j.name for j in judges], [j.axis for j in judges], ledgers,
                  reused)


def judge_inputs(examples: Sequence[Example], candidates: Sequence[Candidate], cfg: JudgeConfig) -> dict[str, Any]:
    """What judgments depend on (reset.data.chunks fingerprints it): the prompts, the candidates,
    the judges and their settings (less how requests are sent)."""
    settings = cfg.model_dump(mode="json")
    settings["llm"] = {k: v for k, v in settings["llm"].items()
                       if k not in ("concurrency", "max_retries", "timeout_s", "backoff_base_s", "backoff_max_s",
                                    "cache_path", "budget_usd", "max_requests", "api_key_env")}
    return {"prompts": digest([to_row(e) for e in examples]), "candidates": digest([to_row(c) for c in candidates]),
            "judges": settings}


def judged_table(examples: Sequence[Example], candidates: Sequence[Candidate], judgments: Sequence[Judgment],
                 judge_names: Sequence[str]) -> dict[str, list[Any]]:
    """Every judged candidate, one column per field (MLflow's table artifact)."""
    by_ex, by_c = {e.id: e for e in examples}, {c.id: c for c in candidates}
    ex = [by_ex[j.example_id] for j in judgments]
    cand = [by_c[j.candidate_id] for j in judgments]
    return {
        "example_id": [j.example_id for j in judgments],
        "candidate_id": [j.candidate_id for j in judgments],
        "source": [e.source for e in ex],
        "kind": [e.kind for e in ex],
        "instruction": [e.instruction for e in ex],
        "response": [c.text for c in cand],
        "strategy": [str(c.decoding.get("strategy")) for c in cand],
        "temperature": [c.decoding.get("temperature") for c in cand],
        **{f"score_{a}": [j.scores.get(a) for j in judgments] for a in AXES},
        **{f"judge_{n}": [j.details["by_judge"].get(n) for j in judgments] for n in judge_names},
        "combined": [j.combined for j in judgments],
        "rationale": [j.rationale for j in judgments],
    }
