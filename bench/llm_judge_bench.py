"""Throughput of the LLM judge (judgments/s): concurrency 32 against a sequential client (concurrency 1).

    .venv/bin/python bench/llm_judge_bench.py
        # the local fault server (tests/fault_server.py): 50 ms latency per request, no faults
    OPENAI_API_KEY=... .venv/bin/python bench/llm_judge_bench.py --base-url http://vllm:8000/v1 \\
        --model Qwen/Qwen2.5-7B-Instruct [--api-key-env OPENAI_API_KEY] [--n 320 --n-seq 32]
        # a real OpenAI-compatible server (vLLM, KServe, a hosted API): its throughput and the ratio

Prompts are the demo set's grounded examples (faithfulness rubric by default), each with a distinct
response, so nothing is deduplicated; no cache is used. Both rows run in the same process against
the same server; the ratio is judgments/s at --concurrency over judgments/s at concurrency 1.
Prints a Markdown table. Figures are for the machine that ran it (client and local server share
its cores); compare them within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reset.data.demo import build_demo  # noqa: E402
from reset.data.records import Candidate  # noqa: E402
from reset.judging.llm import LLMJudge, LLMJudgeConfig  # noqa: E402
from tests.fault_server import FaultConfig, FaultServer  # noqa: E402


def make_pairs(n: int, tag: str):
    _, grounded = build_demo(seed=0, n_instruction=1, n_grounded=100)
    return [
        (ex := grounded[k % len(grounded)],
         Candidate(id=f"{tag}-{k}", example_id=ex.id, text=f"{ex.response} (variant {tag}-{k})"))
        for k in range(n)
    ]


def run(cfg: LLMJudgeConfig, axis: str, n: int, tag: str) -> dict:
    judge = LLMJudge(cfg, axis=axis)
    pairs = make_pairs(n, tag)
    t0 = time.perf_counter()
    out = judge.score(pairs)
    wall = time.perf_counter() - t0
    st = judge.stats()
    return {"n": len(out), "wall": wall, "rate": len(out) / wall, "errors": st["errors"],
            "requests": st["requests"], "concurrency": cfg.concurrency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="", help="an OpenAI-compatible /v1 endpoint (default: local fault server)")
    ap.add_argument("--model", default="fault-model")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY", help="NAME of the env var holding the key")
    ap.add_argument("--axis", default="faithfulness", choices=["instruction", "faithfulness"])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--n", type=int, default=960, help="judgments at --concurrency")
    ap.add_argument("--n-seq", type=int, default=60, help="judgments at concurrency 1")
    ap.add_argument("--latency", type=float, default=0.05, help="local server latency per request (s)")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    server = None
    if args.base_url:
        base_url, where = args.base_url, f"{args.model} at {args.base_url}"
    else:
        server = FaultServer(FaultConfig(latency_s=args.latency, fail_rate=0.0)).start()
        base_url, where = server.base_url, f"local fault server, {args.latency * 1000:g} ms latency, no faults"
    try:
        rows = []
        for conc, n, tag in ((1, args.n_seq, "seq"), (args.concurrency, args.n, "conc")):
            cfg = LLMJudgeConfig(base_url=base_url, model=args.model, api_key_env=args.api_key_env,
                                 concurrency=conc, timeout_s=args.timeout, cache_path="")
            rows.append(run(cfg, args.axis, n, f"{tag}-{time.time_ns()}"))
    finally:
        if server is not None:
            server.stop()

    base = rows[0]["rate"]
    print(f"LLM judge throughput ({args.axis} rubric; {where})\n")
    print("| client | concurrency | judgments | requests | errors | wall (s) | judgments/s | vs sequential |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r, name in zip(rows, ("sequential", "concurrent"), strict=True):
        print(f"| {name} | {r['concurrency']} | {r['n']} | {r['requests']} | {r['errors']} | {r['wall']:.2f} "
              f"| {r['rate']:.1f} | {r['rate'] / base:.1f}x |")


if __name__ == "__main__":
    main()
