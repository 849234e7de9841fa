"""The judges a JudgeConfig names (`judge.judges`), built with their settings, and their release."""

from __future__ import annotations

from collections.abc import Sequence

from reset.config import JudgeConfig
from reset.judging.base import Judge
from reset.judging.faithfulness import build_judge as build_faithfulness_judge
from reset.judging.lexical import KPrecision, ReferenceTask
from reset.judging.llm import llm_judges
from reset.judging.rules import InstructionRules


def default_judges() -> list[Judge]:
    """The offline defaults: IFEval rules, K-Precision, task score against the reference."""
    return [InstructionRules(), KPrecision(), ReferenceTask()]


def build_judges(cfg: JudgeConfig, cache_dir: str = "") -> list[Judge]:
    """The judges named in `cfg.judges`, in that order. LLM judges built together share one
    ledger (budget, counters) and one cache connection."""
    llm: dict[str, Judge] = {}
    if axes := cfg.llm_axes():
        llm = {j.name: j for j in llm_judges(cfg.llm.model_copy(update={"axes": axes}))}
    out: list[Judge] = []
    for name in cfg.judges:
        if name == "rules":
            out.append(InstructionRules())
        elif name == "k-precision":
            out.append(KPrecision())
        elif name == "reference":
            out.append(ReferenceTask())
        elif name in ("embedding", "nli"):
            out.append(build_faithfulness_judge(name, cfg, cache_dir))
        elif name in llm:
            out.append(llm[name])
        else:  # config validation names the key; this is a programming error
            raise ValueError(f"unknown judge {name!r}")
    return out


def close_judges(judges: Sequence[Judge]) -> None:
    """Release what judges hold open (the LLM judges' cache connection)."""
    for cache in {id(c): c for j in judges if (c := getattr(j, "cache", None)) is not None}.values():
        cache.close()
