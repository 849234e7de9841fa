"""What one more model costs the vLLM CPU engine: a new engine (with the engine core in its own
process, vLLM's default, or in the worker's process, what the backend sets) against swapping the
weights of a running engine (reload_weights, what the backend does for checkpoints of one
architecture).

    RESET_VLLM_PYTHON=.venv-vllm/bin/python .venv/bin/python bench/engine_bench.py [--repeats 2]

Model: SmolLM2-135M-Instruct (builtin, converted once and cached) and a copy of it with every
matrix moved (a stand-in for a fine-tuned checkpoint). Each arm runs in a fresh process of the
vLLM environment, in turn, `--repeats` times: the process's wall time, vLLM's import, the engine's
start, 40 greedy answers of up to 64 tokens, and the engine's shutdown; the swap arm then loads the
second checkpoint into the running engine and answers again, and checks the answers equal those of
an engine started on the second checkpoint (the `fresh` arm). Ratios are to the default engine of
the same repeat.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r'''
import json, os, sys, time
t0 = time.monotonic()
from vllm import LLM, SamplingParams
t_import = time.monotonic() - t0
import importlib.util
spec = importlib.util.spec_from_file_location("vllm_worker", sys.argv[4])  # standard library + vllm only
vllm_worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vllm_worker)

if __name__ == "__main__":
    model, other, out = sys.argv[1], sys.argv[2], sys.argv[3]
    t1 = time.monotonic()
    llm = LLM(model=model, dtype="bfloat16", enforce_eager=True, max_model_len=600, seed=0,
              max_num_batched_tokens=16384, enable_chunked_prefill=False)
    res = {"import_s": t_import, "start_s": time.monotonic() - t1}
    prompts = [f"Write one sentence about the number {i}." for i in range(40)]
    sp = SamplingParams(temperature=0, max_tokens=64)
    t2 = time.monotonic()
    first = llm.generate(prompts, sp, use_tqdm=False)
    res["answer_s"] = time.monotonic() - t2
    texts = [o.outputs[0].text for o in first]
    if other != "-":
        t3 = time.monotonic()
        vllm_worker._load_weights(llm, other)
        res["swap_s"] = time.monotonic() - t3
        texts = [o.outputs[0].text for o in llm.generate(prompts, sp, use_tqdm=False)]
    t4 = time.monotonic()
    del llm
    import gc
    gc.collect()
    res["shutdown_s"] = time.monotonic() - t4
    res["texts"] = texts
    with open(out, "w") as fh:
        json.dump(res, fh)
    os._exit(0)  # what is left to tear down is not the engine's
'''


def moved_copy(base: Path, out: Path) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    sd = load_file(base / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    sd = {k: (v + 0.02 * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype) if v.ndim == 2 else v
          for k, v in sd.items()}
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    return out


def arm(python: str, script: Path, model: Path, other: str, mp: bool, tmp: Path) -> dict:
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if mp else "0"}
    out = tmp / "out.json"
    t0 = time.monotonic()
    worker = REPO / "reset" / "models" / "generation" / "vllm_worker.py"
    proc = subprocess.run([python, str(script), str(model), other, str(out), str(worker)], env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"arm failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    out.unlink()
    res["wall_s"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from reset.config import GenerateConfig
    from reset.models.generation.vllm_server import worker_python
    from reset.models.loading import resolve_model

    python = worker_python(GenerateConfig())
    if not python:
        raise SystemExit("no vLLM environment: `make vllm`")
    base = resolve_model("builtin:smollm2-135m-instruct")
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as td:
        tmp = Path(td)
        other = moved_copy(base, tmp / "moved")
        script = tmp / "child.py"
        script.write_text(CHILD)
        print("| repeat | arm | process wall (s) | vLLM import (s) | engine start (s) | 40 answers (s) "
              "| weight swap (s) | shutdown (s) | wall vs default |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in range(1, args.repeats + 1):
            rows = {
                "new engine, core in its own process (vLLM's default)": arm(python, script, base, "-", True, tmp),
                "new engine, core in the worker's process (the backend)": arm(python, script, base, "-", False, tmp),
                "fresh engine on the moved checkpoint": arm(python, script, other, "-", False, tmp),
                "running engine, moved checkpoint swapped in": arm(python, script, base, str(other), False, tmp),
            }
            ref = rows["new engine, core in its own process (vLLM's default)"]["wall_s"]
            for name, x in rows.items():
                swap = f"{x['swap_s']:.2f}" if "swap_s" in x else "-"
                print(f"| {r} | {name} | {x['wall_s']:.1f} | {x['import_s']:.1f} | {x['start_s']:.1f} | "
                      f"{x['answer_s']:.1f} | {swap} | {x['shutdown_s']:.1f} | {x['wall_s'] / ref:.2f} |")
            same = sum(a == b for a, b in zip(rows["fresh engine on the moved checkpoint"]["texts"],
                                              rows["running engine, moved checkpoint swapped in"]["texts"],
                                              strict=True))
            print(f"<!-- repeat {r}: swapped-in answers equal to the fresh engine's: {same}/40 -->")


if __name__ == "__main__":
    main()
