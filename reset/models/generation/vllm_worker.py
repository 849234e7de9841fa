"""vLLM offline-engine worker: reads a JSON request, writes one JSON line per request's outputs.

    <vllm python> reset/models/generation/vllm_worker.py REQUEST.json OUT.jsonl

Runs in vLLM's own environment (on a CPU machine `.venv-vllm`, which does not have this project
installed), so it imports nothing from `reset`: only the standard library and vllm. It is also
what the in-process path calls (`run(request)`) where vllm is importable (the CUDA image).

Request:
    {"model": "<HF model dir>", "adapters": {"<name>": "<peft adapter dir>", ...}, "lora_rank": 16,
     "engine": {"dtype": "bfloat16", "max_model_len": 2048, "seed": 0, ...},  # LLM(...) kwargs
     "requests": [{"id": "...", "prompt_token_ids": [...], "adapter": "<name>" | null,
                   "params": {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 64,
                              "seed": 123, "stop_token_ids": [2]}}, ...]}
One engine serves the base model and every adapter (LoRA), all requests in one generate call.
Output line per request: {"id": "...", "texts": [...], "token_counts": [...]}; the last line is
{"_stats": {"engine_start_s": ..., "generate_s": ..., "output_tokens": ...}}.
Progress goes to stderr as `vllm-worker: <done>/<total>` lines.
"""

from __future__ import annotations

import json
import os
import sys
import time


def run(request: dict, out_path: str) -> dict:
    from vllm import LLM, SamplingParams

    try:
        from vllm.inputs import TokensPrompt
    except ImportError:  # older layouts
        TokensPrompt = dict  # noqa: N806

    engine = dict(request.get("engine") or {})
    adapters = dict(request.get("adapters") or {})
    t0 = time.monotonic()
    if adapters:
        engine.setdefault("enable_lora", True)
        engine.setdefault("max_lora_rank", _lora_rank_slot(int(request.get("lora_rank") or 16)))
        engine.setdefault("max_loras", len(adapters))
    llm = LLM(model=request["model"], **engine)
    start_s = time.monotonic() - t0
    loras = {}
    if adapters:
        from vllm.lora.request import LoRARequest

        loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(sorted(adapters.items()))}

    reqs = request["requests"]
    prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in reqs]
    params = [SamplingParams(**dict(r["params"])) for r in reqs]
    lora_requests = [loras[r["adapter"]] if r.get("adapter") else None for r in reqs]
    t1 = time.monotonic()
    outputs = llm.generate(prompts, params, lora_request=lora_requests if loras else None,
                           use_tqdm=_progress_bar())
    gen_s = time.monotonic() - t1
    tokens = 0
    tmp = out_path + ".part"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r, o in zip(reqs, outputs, strict=True):
            texts = [c.text for c in o.outputs]
            counts = [len(c.token_ids) for c in o.outputs]
            tokens += sum(counts)
            fh.write(json.dumps({"id": r["id"], "texts": texts, "token_counts": counts}) + "\n")
        stats = {"engine_start_s": start_s, "generate_s": gen_s, "output_tokens": tokens}
        fh.write(json.dumps({"_stats": stats}) + "\n")
    os.replace(tmp, out_path)
    return stats


def _lora_rank_slot(rank: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set of sizes: the smallest that holds `rank`."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    return rank


def _progress_bar():
    """A tqdm stand-in for LLM.generate that prints `vllm-worker: done/total` (finished requests)
    to stderr at most once a second, so one call keeps the whole batch and still reports progress."""
    from tqdm import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - tqdm's own drawing goes nowhere
            super().__init__(*args, **kwargs)
            self._last = 0.0

        def update(self, n=1):
            out = super().update(n)
            now = time.monotonic()
            if self.n >= (self.total or 0) or now - self._last >= 1.0:
                self._last = now
                print(f"vllm-worker: {self.n}/{self.total}", file=sys.stderr, flush=True)
            return out

    return Bar


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # our modules are not vllm
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        request = json.load(fh)
    run(request, argv[1])
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes: the guard is required
    raise SystemExit(main(sys.argv[1:]))
