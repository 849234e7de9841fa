"""The generate step's backends against the raw vLLM engine, on the same prompts, in one run.

    make vllm   # once
    .venv/bin/python bench/generate_bench.py [--config configs/demo.yaml] [--no-hf]

Takes the seen prompts the demo config's mix step produces (60 prompts x the 4-setting grid = 240
samples, 64 new tokens) and generates them three ways, one after the other:
  raw    vLLM's offline engine called directly on the prompt texts (bench/vllm_raw.py, vLLM's venv,
         the same engine arguments as the backend: bf16, eager, whole-prompt scheduling) - the baseline;
  vllm   the project's generation seam with backend vllm (prompt token ids made here, a worker in
         vLLM's venv, candidate records written);
  hf     the seam with backend hf (batched transformers generate, fp32), as the demo used before.
With --adapter DIR (a LoRA fine-tuning output on the same base, e.g. a demo run's MTL adapter), two
more rows on the same prompts: the adapter served by vLLM's LoRA path (generate.vllm_lora=serve)
and merged into a bf16 copy first (merge, the CPU default; the merge time is part of its wall).
Prints a Markdown table: output tokens/s of generation (engine start reported apart), the wall
time of the whole call, and each as a ratio to raw.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reset.config import load_config  # noqa: E402
from reset.data.mix import load_source, mix  # noqa: E402
from reset.models import chat  # noqa: E402
from reset.models.generation import run  # noqa: E402
from reset.models.generation.common import plan  # noqa: E402
from reset.models.generation.vllm_backend import engine_args  # noqa: E402
from reset.models.loading import load_tokenizer, resolve_model  # noqa: E402


def seen_prompts(cfg):
    rows = {}
    for slot in ("instruction", "grounded"):
        rows[slot] = [ex for src in getattr(cfg.data, slot) for ex in load_source(src, slot, cfg.data)[0]]
    return mix(rows["instruction"], rows["grounded"], cfg.data).seen


def raw_engine(python: str, model: Path, examples, cfg) -> dict:
    tok = load_tokenizer(model)
    stops = chat.stop_token_ids(tok)
    reqs = plan(examples, cfg.generate)
    spec = {"model": str(model), "engine": engine_args(cfg.generate, cfg.model, gpu=False),
            "prompts": [chat.prompt_text(tok, r.example, cfg.model.system_prompt) for r in reqs],
            "params": [{"n": r.n, "temperature": r.setting.temperature,
                        "top_p": r.setting.top_p if r.setting.temperature > 0 else 1.0,
                        "max_tokens": cfg.generate.max_new_tokens, "seed": r.seed, "stop_token_ids": stops}
                       for r in reqs]}
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps(spec))
        env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
               "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
        t0 = time.monotonic()
        subprocess.run([python, str(REPO / "bench" / "vllm_raw.py"), str(inp), str(out)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = json.loads(out.read_text())
        res["wall_s"] = time.monotonic() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--no-hf", action="store_true", help="skip the (slow) hf backend")
    ap.add_argument("--adapter", default="", help="a LoRA output on the same base: also time serve vs merge")
    ap.add_argument("--prompts", default="", help="a JSONL of prompts (a run's seen_prompts; default: the mix's)")
    ap.add_argument("--only-raw", action="store_true", help="only the raw engine (bench/profile_run.py)")
    ap.add_argument("--json", action="store_true", help="with --only-raw: print one JSON line")
    ap.add_argument("--model-from", default="", help="the raw engine samples from this fine-tuning output "
                    "(its adapter merged into a copy of the base, as the step's worker loads it) instead of the "
                    "base: the generate step samples from the MTL model (bench/profile_run.py)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    python = os.environ.get("RESET_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if not os.path.exists(python):
        sys.exit(f"no vLLM environment at {python}: run `make vllm`")
    model = resolve_model(cfg.model.base, cfg.model.cache_dir)
    if args.prompts:
        from reset.data.records import Example, read_jsonl

        examples = read_jsonl(args.prompts, Example)[0]
    else:
        examples = seen_prompts(cfg)
    if args.model_from:
        import atexit
        import shutil

        from reset.models.loading import merge_to

        tmp = tempfile.mkdtemp(prefix="reset-bench-merged-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        model = merge_to(args.model_from, Path(tmp) / "model", cache_dir=cfg.model.cache_dir)
    rows = {"raw": raw_engine(python, model, examples, cfg)}
    if args.only_raw:
        r = rows["raw"]
        r["tokens_per_s"] = r["output_tokens"] / r["generate_s"]
        print(json.dumps(r) if args.json else f"raw engine: {r['output_tokens']} tokens in {r['generate_s']:.1f} s "
              f"= {r['tokens_per_s']:.0f} tokens/s (engine start {r['engine_start_s']:.1f} s)")
        return
    for backend in ("vllm",) + (() if args.no_hf else ("hf",)):
        gcfg = cfg.generate.model_copy(update={"backend": backend, "vllm_python": python})
        t0 = time.monotonic()
        result = run(model, examples, gcfg, cfg.model, log=lambda s: None)
        st = result.stats
        rows[backend] = {"engine_start_s": st["engine_start_s"], "generate_s": st["generate_s"],
                         "output_tokens": st["output_tokens"], "wall_s": time.monotonic() - t0}
    for mode in ("serve", "merge") if args.adapter else ():
        gcfg = cfg.generate.model_copy(update={"backend": "vllm", "vllm_python": python, "vllm_lora": mode})
        t0 = time.monotonic()
        st = run(args.adapter, examples, gcfg, cfg.model, log=lambda s: None).stats
        rows[f"vllm, LoRA {mode}"] = {"engine_start_s": st["engine_start_s"], "generate_s": st["generate_s"],
                                      "output_tokens": st["output_tokens"], "wall_s": time.monotonic() - t0}
    samples = sum(r.n for r in plan(examples, cfg.generate))
    base = rows["raw"]
    print(f"{len(examples)} prompts, {samples} samples, up to {cfg.generate.max_new_tokens} new tokens\n")
    print("| path | output tokens | generate (s) | tokens/s | vs raw | engine start (s) | wall (s) | wall vs raw |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    raw_tps = base["output_tokens"] / base["generate_s"]
    for name, r in rows.items():
        tps = r["output_tokens"] / r["generate_s"]
        print(f"| {name} | {r['output_tokens']} | {r['generate_s']:.1f} | {tps:.0f} | {tps / raw_tps:.2f} | "
              f"{r['engine_start_s']:.1f} | {r['wall_s']:.1f} | {r['wall_s'] / base['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
