"""The vllm backend: vLLM's offline engine (`LLM.generate`, `SamplingParams(n=..., seed=...)`).

Where vllm is importable (the CUDA image) the engine runs in this process. On a CPU machine vLLM
lives in its own environment (`.venv-vllm`, see requirements-vllm.txt: its pins clash with mlflow
and kfp), so the engine runs in a worker process of that environment (vllm_worker.py, which
imports nothing from this project) and the two exchange JSON files: the step tokenizes the
prompts here (the same ids the hf backend uses), the worker samples, the step writes the
candidates. No server is started.

Which Python runs the worker: `generate.vllm_python`, else RESET_VLLM_PYTHON, else `.venv-vllm`
beside this project. CPU engine settings follow what measured fastest here: bf16, eager mode,
every core of the CPU quota (VLLM_CPU_NUM_OF_RESERVED_CPU=0), a KV cache of
`generate.vllm_kv_cache_gb` and max_num_batched_tokens >= 16384 (seeded sampling over large
batches needs it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reset import progress, runtime
from reset.config import GenerateConfig, ModelConfig
from reset.data.records import Example
from reset.errors import ModelError
from reset.models import chat, loading
from reset.models.generation import vllm_worker
from reset.models.generation.common import Generation, attach_prompts, candidates, plan

WORKER = Path(vllm_worker.__file__)
PROJECT_ROOT = Path(__file__).resolve().parents[3]


class VLLMUnavailable(RuntimeError):
    """vLLM can neither be imported here nor found in a separate environment."""


def in_process() -> bool:
    return importlib.util.find_spec("vllm") is not None


def worker_python(cfg: GenerateConfig) -> str | None:
    """The Python of a vLLM environment for the worker, or None when there is none."""
    for candidate in (cfg.vllm_python, os.environ.get("RESET_VLLM_PYTHON", ""),
                      str(PROJECT_ROOT / ".venv-vllm" / "bin" / "python")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def available(cfg: GenerateConfig) -> tuple[bool, str]:
    """(can vllm run here, how or why not)."""
    if in_process():
        return True, "in-process"
    python = worker_python(cfg)
    if python:
        return True, f"worker ({python})"
    return False, ("vllm is not importable here and no vLLM environment was found (generate.vllm_python, "
                   "RESET_VLLM_PYTHON or .venv-vllm: `make vllm` builds it)")


def engine_args(cfg: GenerateConfig, model_cfg: ModelConfig, gpu: bool) -> dict[str, Any]:
    args: dict[str, Any] = {
        "max_model_len": model_cfg.max_prompt_length + cfg.max_new_tokens + 8,
        "seed": cfg.seed,
        "max_num_batched_tokens": max(16384, model_cfg.max_prompt_length + cfg.max_new_tokens + 8),
        "max_num_seqs": cfg.vllm_max_num_seqs,
    }
    if gpu:
        args.update(dtype="auto", gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
    else:
        # A prompt prefilled in chunks makes vLLM rewind a seeded request's random generator, which
        # the CPU generator cannot do ("CPU Generator does not use offset"): schedule whole prompts.
        args.update(dtype=cfg.vllm_cpu_dtype, enforce_eager=True, enable_chunked_prefill=False)
    return args


def _env(cfg: GenerateConfig) -> dict[str, str]:
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_KVCACHE_SPACE": str(cfg.vllm_kv_cache_gb), "TOKENIZERS_PARALLELISM": "false"}
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    quota = runtime.cpu_quota()
    if cores and quota < len(cores):  # a pod's CPU limit: bind vLLM's threads to that many cores
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores[:quota])
    env.pop("RESET_PROGRESS", None)
    return env


def generate(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    cfg: GenerateConfig,
    model_cfg: ModelConfig,
    *,
    model_name: str = "",
    log: Callable[[str], None] = print,
    offset: int = 0,
) -> Generation:
    """Sample candidates for every example over `cfg.grid` with vLLM's offline engine."""
    return generate_many({model_name: model_dir}, examples, cfg, model_cfg, log=log, offset=offset)[model_name]


def generate_many(
    models: Mapping[str, str | os.PathLike[str]],
    examples: Sequence[Example],
    cfg: GenerateConfig,
    model_cfg: ModelConfig,
    *,
    log: Callable[[str], None] = print,
    offset: int = 0,
) -> dict[str, Generation]:
    """Generate for several models (name -> checkpoint) on the same examples. Models that share a
    base model (LoRA adapters on it, or the base itself) share one engine and one generate call;
    each other base gets its own worker. `offset`: see common.plan (per-request seeds, so a shard
    samples exactly what the unsharded run samples for its prompts)."""
    ok, how = available(cfg)
    if not ok:
        raise VLLMUnavailable(how)
    gpu = _gpu_visible()
    merge = cfg.vllm_lora == "merge" or (cfg.vllm_lora == "auto" and not gpu)
    out: dict[str, Generation] = {}
    with tempfile.TemporaryDirectory(prefix="reset-merged-") as merged_root:
        groups: dict[Path, dict[str, Path | None]] = {}
        for name, path in models.items():
            base, adapter = loading.checkpoint_parts(path, model_cfg.cache_dir)
            if adapter is not None and merge:
                t0 = time.monotonic()
                base, adapter = loading.merge_to(path, Path(merged_root) / f"m{len(groups)}",
                                                 cache_dir=model_cfg.cache_dir), None
                log(f"[generate:vllm] {name}: adapter merged into a copy of its base for the engine "
                    f"({time.monotonic() - t0:.1f}s; generate.vllm_lora={cfg.vllm_lora})")
            groups.setdefault(Path(base), {})[name] = adapter
        for base, members in groups.items():
            out.update(_generate_group(base, members, examples, cfg, model_cfg, how, gpu, log, offset))
    return {name: out[name] for name in models}


def _generate_group(base: Path, members: Mapping[str, Path | None], examples: Sequence[Example], cfg: GenerateConfig,
                    model_cfg: ModelConfig, how: str, gpu: bool, log: Callable[[str], None], offset: int = 0,
                    ) -> dict[str, Generation]:
    tok = loading.load_tokenizer(base)
    stops = chat.stop_token_ids(tok)
    reqs = plan(examples, cfg, offset)
    cut = attach_prompts(reqs, tok, model_cfg)
    # The engine's adapter names are ours, never the caller's model names: a name may be "" (run()'s
    # default), which the worker would read as "no adapter" and answer with the base model.
    lora_of = {name: f"adapter{i}" for i, (name, a) in enumerate(members.items()) if a is not None}
    adapters = {lora_of[name]: str(a) for name, a in members.items() if a is not None}
    wire = []
    for name in members:
        for i, r in enumerate(reqs):
            wire.append({"id": f"{name}\t{i}", "prompt_token_ids": r.prompt_ids,
                         "adapter": lora_of.get(name),
                         "params": {"n": r.n, "temperature": r.setting.temperature,
                                    "top_p": r.setting.top_p if r.setting.temperature > 0 else 1.0,
                                    "max_tokens": cfg.max_new_tokens, "seed": r.seed, "stop_token_ids": stops,
                                    "skip_special_tokens": True}})
    request = {"model": str(base), "adapters": adapters,
               "lora_rank": max([_lora_rank(Path(a)) for a in adapters.values()] or [0]),
               "engine": engine_args(cfg, model_cfg, gpu), "requests": wire}
    total = sum(r.n for r in reqs) * len(members)
    label = ", ".join(members)
    log(f"[generate:vllm] {len(examples)} prompts x {len(cfg.grid)} settings x {len(members)} model(s) ({label}) -> "
        f"{total} samples; engine {how}, {'GPU' if gpu else 'CPU'}, base {base}"
        + (f", adapters {sorted(lora_of)}" if adapters else ""))
    with tempfile.TemporaryDirectory(prefix="reset-vllm-") as tmp:
        req_path, out_path = os.path.join(tmp, "request.json"), os.path.join(tmp, "out.jsonl")
        with open(req_path, "w", encoding="utf-8") as fh:
            json.dump(request, fh)
        t0 = time.monotonic()
        if in_process():
            vllm_worker.run(request, out_path)
        else:
            _run_worker(worker_python(cfg) or "", req_path, out_path, _env(cfg), total, label, log)
        wall = time.monotonic() - t0
        by_id: dict[str, list[str]] = {}
        stats: dict[str, Any] = {}
        with open(out_path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "_stats" in row:
                    stats = row["_stats"]
                else:
                    by_id[row["id"]] = row["texts"]
    missing = [w["id"] for w in wire if w["id"] not in by_id]
    if missing:
        raise ModelError(f"vLLM returned no output for {len(missing)} of {len(wire)} requests")
    gen_s = float(stats.get("generate_s", wall))
    tokens = int(stats.get("output_tokens", 0))
    start_s = float(stats.get("engine_start_s", 0.0))
    log(f"[generate:vllm] {total} samples, {tokens} tokens in {gen_s:.1f}s ({tokens / max(gen_s, 1e-9):.0f} tokens/s); "
        f"engine start {start_s:.1f}s, wall {wall:.1f}s")
    out = {}
    for name in members:
        texts = [by_id[f"{name}\t{i}"] for i in range(len(reqs))]
        cands = candidates(reqs, texts, cfg, backend="vllm", model_name=name, order=examples)
        out[name] = Generation(cands, {"backend": "vllm", "engine_start_s": start_s, "generate_s": gen_s,
                                       "output_tokens": tokens, "tokens_per_s": tokens / gen_s if gen_s else 0.0,
                                       "prompts_cut": cut, "wall_s": wall, "models_in_engine": len(members)})
    return out


def _run_worker(python: str, req_path: str, out_path: str, env: dict[str, str], total: int, label: str,
                log: Callable[[str], None], stall_s: float = 600.0) -> None:
    """Run the worker in vLLM's environment, in a process group of its own; its log goes to ours,
    its progress to the progress bar. A worker that prints nothing for `stall_s` seconds (vLLM's
    engine process died and the client waits forever) or is interrupted is killed with its whole
    group (the engine's processes too), never left behind."""
    import queue
    import signal
    import threading

    bar = progress.Progress(total, "samples", label)
    tail: list[str] = []
    proc = subprocess.Popen([python, str(WORKER), req_path, out_path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, bufsize=1, start_new_session=True)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for ln in proc.stdout:  # type: ignore[union-attr]
            lines.put(ln)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    with open(req_path, encoding="utf-8") as fh:
        reqs = json.load(fh)["requests"]
    samples_per_req = [r["params"]["n"] for r in reqs]
    stalled = False
    try:
        while True:
            try:
                line = lines.get(timeout=stall_s)
            except queue.Empty:
                stalled = True
                break
            if line is None:
                break
            line = line.rstrip("\n")
            if line.startswith("vllm-worker: "):
                done_reqs = int(line.split(": ", 1)[1].split("/")[0])
                bar.update(sum(samples_per_req[:done_reqs]))
            sys.stdout.write(line + "\n")
            tail = (tail + [line])[-30:]
    finally:
        if proc.poll() is None and (stalled or sys.exc_info()[0] is not None):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    if stalled:
        raise ModelError(f"the vLLM worker ({python}) printed nothing for {stall_s:.0f}s (its engine died?); killed it. "
                         "Last lines:\n" + "\n".join(tail))
    if code != 0 or not os.path.exists(out_path):
        raise ModelError(f"the vLLM worker ({python}) exited with code {code}; last lines:\n" + "\n".join(tail))


def _gpu_visible() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _lora_rank(adapter: Path | None) -> int:
    if not adapter:
        return 0
    try:
        return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError):
        return 16
