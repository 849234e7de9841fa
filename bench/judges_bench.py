"""Throughput of the offline judges, in candidates per second.

    .venv/bin/python bench/judges_bench.py [--candidates 2000] [--repeat 3]

Candidates are the demo set's prompts with four kinds of response each (the reference, a copy
of the context, a truncated reference, an unrelated sentence), so every code path is exercised.
Each judge scores the same candidates; the best of --repeat runs is reported. Figures are for
this machine only; compare them within one run (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import time

from reset.data.demo import build_demo
from reset.data.records import Candidate
from reset.judging.lexical import KPrecision, ReferenceTask
from reset.judging.rules import InstructionRules


def candidates(n: int):
    ifs, cds = build_demo(seed=0, n_instruction=150, n_grounded=150)
    exs = ifs + cds
    pairs = []
    k = 0
    while len(pairs) < n:
        ex = exs[k % len(exs)]
        texts = [ex.response, ex.context or ex.instruction, ex.response[: len(ex.response) // 2],
                 "The recipe needs two eggs and a cup of flour."]
        text = texts[(k // len(exs)) % len(texts)]
        pairs.append((ex, Candidate(id=f"{ex.id}/{k}", example_id=ex.id, text=text)))
        k += 1
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--embedding", action="store_true", help="also time the MiniLM embedding judge")
    args = ap.parse_args()
    pairs = candidates(args.candidates)
    judges = [InstructionRules(), KPrecision(), ReferenceTask()]
    if args.embedding:
        from reset.judging.faithfulness import EmbeddingGroundingScorer, FaithfulnessJudge

        judges.append(FaithfulnessJudge(EmbeddingGroundingScorer(), name="embedding"))
    print(f"| judge | axis | candidates | best of {args.repeat} (s) | candidates/s |")
    print("|---|---|---:|---:|---:|")
    for j in judges:
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            j.score(pairs)
            best = min(best, time.perf_counter() - t0)
        print(f"| {j.name} | {j.axis} | {len(pairs)} | {best:.3f} | {len(pairs) / best:,.0f} |")


if __name__ == "__main__":
    main()
