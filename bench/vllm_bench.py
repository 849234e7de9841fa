"""LLM-judge throughput against a real vLLM server, as a ratio to that server's own saturation.

    make vllm   # once: the vLLM CPU venv (.venv-vllm)
    .venv/bin/python bench/vllm_bench.py [--n 96] [--judge-concurrency 32] [--saturation-concurrency 64]

Starts vLLM's OpenAI-compatible server (CPU build, --enforce-eager) on 127.0.0.1 serving the demo
model (SmolLM2-135M-Instruct), then, against the same server and on the same prompts (the
judge's own faithfulness prompts with its JSON schema and max_tokens):
  saturation  raw requests from a bare async OpenAI client at high concurrency: the most this
              server does here, in requests/s;
  judge       the LLM judge (reset.llm_judge) at --judge-concurrency, no cache: judgments/s;
  sequential  the LLM judge at concurrency 1.
Prints a Markdown table with judge / saturation and judge / sequential. Client and server share
this machine's cores; compare figures within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reset.data.demo import build_demo  # noqa: E402
from reset.data.records import Candidate  # noqa: E402
from reset.judging.llm import JSON_SCHEMA, LLMJudge, LLMJudgeConfig, build_prompt  # noqa: E402
from reset.models.loading import resolve_model  # noqa: E402


def pairs(n: int, tag: str):
    _, grounded = build_demo(seed=0, n_instruction=1, n_grounded=100)
    return [(ex := grounded[k % len(grounded)],
             Candidate(id=f"{tag}-{k}", example_id=ex.id, text=f"{ex.response} ({tag} {k})")) for k in range(n)]


def start_server(port: int) -> tuple[subprocess.Popen, Path]:
    python = os.environ.get("RESET_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if not os.path.exists(python):
        sys.exit(f"no vLLM environment at {python}: run `make vllm`")
    model = resolve_model("builtin:smollm2-135m-instruct")
    log = Path(tempfile.mkstemp(prefix="vllm-bench-", suffix=".log")[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    proc = subprocess.Popen(
        [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name",
         "smollm2", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "2048",
         "--dtype", "float32"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, log
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    sys.exit("vLLM did not start:\n" + log.read_text()[-3000:])


async def saturate(base_url: str, n: int, concurrency: int, max_tokens: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=120)
    prompts = [build_prompt("faithfulness", ex, c) for ex, c in pairs(n, "sat")]
    sem = asyncio.Semaphore(concurrency)

    async def one(system: str, user: str) -> None:
        async with sem:
            await client.chat.completions.create(
                model="smollm2", messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                temperature=0.0, max_tokens=max_tokens, response_format=JSON_SCHEMA)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s, u) for s, u in prompts))
    return n / (time.perf_counter() - t0)


def judge_rate(base_url: str, n: int, concurrency: int, tag: str) -> tuple[float, float]:
    cfg = LLMJudgeConfig(base_url=base_url, model="smollm2", concurrency=concurrency, timeout_s=300)
    judge = LLMJudge(cfg, axis="faithfulness")
    t0 = time.perf_counter()
    out = judge.score(pairs(n, tag))
    rate = len(out) / (time.perf_counter() - t0)
    return rate, judge.stats()["errors"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="requests / judgments per concurrent measurement")
    ap.add_argument("--n-seq", type=int, default=12, help="judgments at concurrency 1")
    ap.add_argument("--judge-concurrency", type=int, default=32)
    ap.add_argument("--saturation-concurrency", type=int, default=64)
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    args = ap.parse_args()
    import socket

    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc, log = start_server(port)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        judge_rate(base_url, 8, 8, "warm")  # warm-up: first requests compile grammars, fill caches
        sat = asyncio.run(saturate(base_url, args.n, args.saturation_concurrency, LLMJudgeConfig().max_tokens))
        conc, err_c = judge_rate(base_url, args.n, args.judge_concurrency, "conc")
        seq, err_s = judge_rate(base_url, args.n_seq, 1, "seq")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.unlink(missing_ok=True)
    print("| client | concurrency | n | per second | vs saturation | vs sequential | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| saturation (bare client) | {args.saturation_concurrency} | {args.n} | {sat:.2f} | 1.00 | "
        f"{sat / seq:.1f}x | 0 |"
    )
    print(
        f"| LLM judge | {args.judge_concurrency} | {args.n} | {conc:.2f} | {conc / sat:.2f} | {conc / seq:.1f}x | "
        f"{err_c:.0f} |"
    )
    print(f"| LLM judge (sequential) | 1 | {args.n_seq} | {seq:.2f} | {seq / sat:.2f} | 1.0x | {err_s:.0f} |")


if __name__ == "__main__":
    main()
