"""The vllm backend: vLLM's offline engine (`LLM.generate`, `SamplingParams(n=..., seed=...)`).

Where vllm is importable (the CUDA image) the engine runs in this process. On a CPU machine vLLM
lives in its own environment (`.venv-vllm`, see requirements-vllm.txt: its pins clash with mlflow
and kfp), so the engine runs in a worker process of that environment (vllm_worker.py, which
imports nothing from this project) and the two exchange JSON files: the step tokenizes the
prompts here (the same ids the hf backend uses), the worker samples, the step writes the
candidates; the worker itself, and the one a local run keeps for all its steps, is
vllm_server.py's.

Which Python runs the worker: `generate.vllm_python`, else RESET_VLLM_PYTHON, else `.venv-vllm`
beside this project. CPU engine settings follow what measured fastest here: bf16, eager mode,
every core of the CPU quota (VLLM_CPU_NUM_OF_RESERVED_CPU=0), a KV cache of
`generate.vllm_kv_cache_gb` and max_num_batched_tokens >= 16384 (seeded sampling over large
batches needs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reset.config import GenerateConfig, ModelConfig
from reset.data.chunks import ChunkStore
from reset.data.records import Example
from reset.errors import ModelError
from reset.models import chat, loading
from reset.models.generation import vllm_worker
from reset.models.generation.common import Generation, attach_prompts, candidates, chunk_name, plan, resumed_texts
from reset.models.generation.vllm_server import (
    gpu_visible,
    in_process,
    run_on_server,
    run_worker,
    worker_env,
    worker_python,
)


class VLLMUnavailable(RuntimeError):
    """vLLM can neither be imported here nor found in a separate environment."""


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


def generate(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    cfg: GenerateConfig,
    model_cfg: ModelConfig,
    *,
    model_name: str = "",
    log: Callable[[str], None] = print,
    offset: int = 0,
    store: ChunkStore | None = None,
) -> Generation:
    """Sample candidates for every example over `cfg.grid` with vLLM's offline engine."""
    return generate_many({model_name: model_dir}, examples, cfg, model_cfg, log=log, offset=offset,
                         store=store)[model_name]


def generate_many(
    models: Mapping[str, str | os.PathLike[str]],
    examples: Sequence[Example],
    cfg: GenerateConfig,
    model_cfg: ModelConfig,
    *,
    log: Callable[[str], None] = print,
    offset: int = 0,
    store: ChunkStore | None = None,
) -> dict[str, Generation]:
    """Generate for several models (name -> checkpoint) on the same examples, with as few engines
    as possible: every model of one architecture and tokenizer shares one engine (one worker
    process): LoRA adapters served on their base (`vllm_lora` serve, a GPU's default) or merged
    into the base's weights on their way into the engine (merge, a CPU's default), other
    checkpoints (full fine-tunes) loaded into it in place, one after another. `offset`: see
    common.plan (per-request seeds, so a shard samples exactly what the unsharded run samples for
    its prompts). `store`: each chunk's samples are saved there as the engine finishes it, and
    the chunks it already holds are not asked for again (reset.data.chunks)."""
    ok, how = available(cfg)
    if not ok:
        raise VLLMUnavailable(how)
    gpu = gpu_visible()
    merge = cfg.vllm_lora == "merge" or (cfg.vllm_lora == "auto" and not gpu)
    out: dict[str, Generation] = {}
    with tempfile.TemporaryDirectory(prefix="reset-merged-") as merged_root:
        groups: dict[str, dict[str, _Member]] = {}  # engine key -> name -> member
        for i, (name, path) in enumerate(models.items()):
            base, adapter = loading.checkpoint_parts(path, model_cfg.cache_dir)
            if not gpu and (why := cpu_unsupported(base)):
                raise VLLMUnavailable(why)
            member = _Member(Path(base), served=adapter)
            if adapter is not None and merge:
                why = vllm_worker.lora_merge_unsupported(str(adapter)) or (
                    "vLLM runs in this process" if in_process() else "")
                if not why:  # merged by the engine's worker as the weights load: no copy written
                    member = _Member(Path(base), merged=adapter)
                else:
                    t0 = time.monotonic()
                    member = _Member(loading.merge_to(path, Path(merged_root) / f"m{i}", cache_dir=model_cfg.cache_dir))
                    log(f"[generate:vllm] {name}: adapter merged into a copy of its base for the engine "
                        f"({time.monotonic() - t0:.1f}s; generate.vllm_lora={cfg.vllm_lora}; not in the engine: {why})")
            groups.setdefault(engine_key(member.dir), {})[name] = member
        for members in groups.values():
            out.update(_generate_group(members, examples, cfg, model_cfg, how, gpu, log, offset, store))
    return {name: out[name] for name in models}


# Head sizes vLLM's CPU attention has kernels for (vllm/v1/attention/backends/cpu_attn.py,
# CPUAttentionBackend.get_supported_head_sizes, vLLM 0.32). Any other fails only after the engine
# has started ("Unsupported CPU attention configuration"): checked before a worker is started.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def cpu_unsupported(model_dir: str | os.PathLike[str]) -> str:
    """Why vLLM's CPU build cannot run the model in `model_dir` ("" when it can, or when its
    config does not say): its attention head size has no CPU kernel."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""  # engine_key reports an unreadable config
    text = config.get("text_config") or config
    head = text.get("head_dim")
    if not head and text.get("hidden_size") and text.get("num_attention_heads"):
        head = text["hidden_size"] // text["num_attention_heads"]
    if isinstance(head, int) and head not in CPU_HEAD_SIZES:
        return (f"{path}: head_dim {head} has no vLLM CPU attention kernel (vLLM's CPU build supports "
                f"{', '.join(map(str, CPU_HEAD_SIZES))})")
    return ""


class _Member:
    """A model as the engine sees it: the weights directory, plus an adapter served on it (LoRA)
    or merged into its weights as they load."""

    def __init__(self, dir: Path, served: Path | None = None, merged: Path | None = None) -> None:  # noqa: A002
        self.dir, self.served, self.merged = dir, served, merged

    @property
    def weights(self) -> tuple[str, str]:
        return str(self.dir), str(self.merged or "")

    def spec(self) -> str | dict[str, str]:
        return {"base": str(self.dir), "adapter": str(self.merged)} if self.merged else str(self.dir)


_CONFIG_NOISE = {"_name_or_path", "torch_dtype", "dtype", "transformers_version", "use_cache"}
_LOADING_NOISE = {"local_files_only", "name_or_path", "_name_or_path", "cache_dir", "revision", "_commit_hash",
                  "trust_remote_code", "token"}


def engine_key(model_dir: str | os.PathLike[str]) -> str:
    """What must be equal for two model directories to share one engine with their weights swapped
    in place: the architecture (config.json without the fields that do not shape the weights or the
    forward pass) and the tokenizer files (the engine detokenizes with the one it started with)."""
    import hashlib

    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{d / 'config.json'}: cannot read the model's config ({exc})") from None
    h = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in _CONFIG_NOISE},
                                  sort_keys=True).encode())
    for name in loading.TOKENIZER_FILES:
        f = d / name
        data = f.read_bytes() if f.is_file() else b"-"
        if name.endswith("_config.json") and f.is_file():  # how it was loaded is saved with it: not the tokenizer
            with contextlib.suppress(ValueError):
                cfg = json.loads(data)
                data = json.dumps({k: v for k, v in cfg.items() if k not in _LOADING_NOISE}, sort_keys=True).encode()
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _generate_group(members: Mapping[str, _Member], examples: Sequence[Example], cfg: GenerateConfig,
                    model_cfg: ModelConfig, how: str, gpu: bool, log: Callable[[str], None], offset: int = 0,
                    store: ChunkStore | None = None) -> dict[str, Generation]:
    """One engine for `members`, all of one engine_key. The engine starts on the directory whose
    adapters it serves (or the first plain one); every other set of weights is swapped in
    afterwards."""
    served_on = [m.dir for m in members.values() if m.served is not None]
    if len(set(served_on)) > 1:  # LoRA needs its base loaded; one engine holds one base at a time
        first = {n: m for n, m in members.items() if m.dir == served_on[0]}
        rest = {n: m for n, m in members.items() if n not in first}
        return {**_generate_group(first, examples, cfg, model_cfg, how, gpu, log, offset, store),
                **_generate_group(rest, examples, cfg, model_cfg, how, gpu, log, offset, store)}
    plain = [m.dir for m in members.values() if m.merged is None]
    start = served_on[0] if served_on else plain[0] if plain else next(iter(members.values())).dir
    own = (str(start), "")
    swaps = list(dict.fromkeys(m.weights for m in members.values() if m.weights != own))
    weight_key = {w: f"w{i}" for i, w in enumerate(swaps)}
    spec_of = {m.weights: m.spec() for m in members.values()}
    names = sorted(members, key=lambda n: members[n].weights != own)  # the engine's own weights first
    tok = loading.load_tokenizer(start)
    stops = chat.stop_token_ids(tok)
    reqs = plan(examples, cfg, offset)
    cut = attach_prompts(reqs, tok, model_cfg)
    # The engine's adapter names are ours, never the caller's model names: a name may be "" (run()'s
    # default), which the worker would read as "no adapter" and answer with the base model.
    lora_of = {name: f"adapter{i}" for i, name in enumerate(names) if members[name].served is not None}
    adapters = {lora_of[name]: str(members[name].served) for name in lora_of}
    chunk_of = {name: [chunk_name(name, r, cfg) for r in reqs] for name in names}
    by_id: dict[str, list[str]] = {}  # the chunks an earlier attempt finished (reset.data.chunks)
    for name in names:
        by_id.update({f"{name}\t{i}": t for i, t in resumed_texts(store, reqs, chunk_of[name], name).items()})
    wire = []
    for name in names:
        for i, r in enumerate(reqs):
            if f"{name}\t{i}" in by_id:
                continue
            wire.append({"id": f"{name}\t{i}", "prompt_token_ids": r.prompt_ids, "chunk": chunk_of[name][i],
                         "adapter": lora_of.get(name), "weights": weight_key.get(members[name].weights),
                         "params": {"n": r.n, "temperature": r.setting.temperature,
                                    "top_p": r.setting.top_p if r.setting.temperature > 0 else 1.0,
                                    "max_tokens": cfg.max_new_tokens, "seed": r.seed, "stop_token_ids": stops,
                                    "skip_special_tokens": True}})
    request = {"model": str(start), "engine_key": engine_key(start), "adapters": adapters,
               "weights": {k: spec_of[w] for w, k in weight_key.items()},
               "lora_rank": max([_lora_rank(Path(a)) for a in adapters.values()] or [0]),
               "engine": engine_args(cfg, model_cfg, gpu), "requests": wire,
               "chunk_files": {c: str(store.path(c)) for c in {w["chunk"] for w in wire}} if store else {}}
    total = sum(r.n for r in reqs) * len(names)
    if by_id:
        log(f"[generate:vllm] {len(by_id)} of {len(by_id) + len(wire)} requests from chunks an earlier attempt "
            "finished")
    label = ", ".join(names)
    log(f"[generate:vllm] {len(examples)} prompts x {len(cfg.grid)} settings x {len(names)} model(s) ({label}) -> "
        f"{total} samples; one engine ({how}, {'GPU' if gpu else 'CPU'}) started on {start}"
        + (f", adapters {sorted(lora_of.values())}" if adapters else "")
        + (f", {len(weight_key)} more set(s) of weights loaded into it in place"
           + (f" ({sum(1 for m in members.values() if m.merged)} with their adapter merged as they load)"
              if any(m.merged for m in members.values()) else "") if weight_key else ""))
    stats: dict[str, Any] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reset-vllm-") as tmp:
        req_path, out_path = os.path.join(tmp, "request.json"), os.path.join(tmp, "out.jsonl")
        with open(req_path, "w", encoding="utf-8") as fh:
            json.dump(request, fh)
        if not wire:
            pass  # every chunk was finished by an earlier attempt: no engine
        elif in_process():
            vllm_worker.run(request, out_path)
        elif adapters or not run_on_server(req_path, out_path, total, label, log):  # (the server runs
            # its engine core in-process, which serves no LoRA adapters: see worker_env)
            run_worker(worker_python(cfg) or "", req_path, out_path, worker_env(cfg, serve_lora=bool(adapters)),
                        total, label, log)
        wall = time.monotonic() - t0
        with contextlib.suppress(FileNotFoundError), open(out_path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "_stats" in row:
                    stats = row["_stats"]
                else:
                    by_id[row["id"]] = row["texts"]
    missing = [w["id"] for w in wire if w["id"] not in by_id]
    if missing:
        raise ModelError(f"vLLM returned no output for {len(missing)} of {len(wire)} requests")
    start_s = float(stats.get("engine_start_s", 0.0))
    groups = stats.get("groups") or {}
    out = {}
    for name in names:
        key = weight_key.get(members[name].weights, "")
        g = groups.get(key, {})
        gen_s = float(g.get("generate_s", stats.get("generate_s", wall)))
        tokens = int(g.get("output_tokens", stats.get("output_tokens", 0)))
        reload_s = float(g.get("reload_s", 0.0))
        log(
            f"[generate:vllm] {name}: {sum(r.n for r in reqs)} samples, {tokens} tokens in {gen_s:.1f}s "
            f"({tokens / max(gen_s, 1e-9):.0f} tokens/s"
            + (", one call with its base's adapters" if adapters and not key else "")
            + ")"
            + (f", weights swapped in {reload_s:.1f}s" if key else "")
        )
        texts = [by_id[f"{name}\t{i}"] for i in range(len(reqs))]
        cands = candidates(reqs, texts, cfg, backend="vllm", model_name=name, order=examples)
        out[name] = Generation(
            cands,
            {
                "backend": "vllm",
                "engine_start_s": start_s,
                "generate_s": gen_s,
                "output_tokens": tokens,
                "tokens_per_s": tokens / gen_s if gen_s else 0.0,
                "reload_s": reload_s,
                "prompts_cut": cut,
                "wall_s": wall,
                "engine_reused": bool(stats.get("engine_reused", False)),
                "models_in_engine": len(names),
            },
        )
    log(
        f"[generate:vllm] {total} samples from {len(names)} model(s) in one engine: engine start {start_s:.1f}s, "
        f"sampling {float(stats.get('generate_s', 0.0)):.1f}s, weight swaps {float(stats.get('reload_s', 0.0)):.1f}s, "
        f"wall {wall:.1f}s"
    )
    return out


def _lora_rank(adapter: Path | None) -> int:
    if not adapter:
        return 0
    try:
        return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError):
        return 16
