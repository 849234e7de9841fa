"""vLLM offline-engine worker: reads a JSON request, writes one JSON line per request's outputs.

    <vllm python> reset/models/generation/vllm_worker.py REQUEST.json OUT.jsonl
    <vllm python> reset/models/generation/vllm_worker.py --serve SOCKET   # one worker for a run: serve()

Runs in vLLM's own environment (on a CPU machine `.venv-vllm`, which does not have this project
installed), so it imports nothing from `reset`: only the standard library and vllm. It is also
what the in-process path calls (`run(request)`) where vllm is importable (the CUDA image).

Request:
    {"model": "<HF model dir>", "adapters": {"<name>": "<peft adapter dir>", ...}, "lora_rank": 16,
     "weights": {"<key>": "<HF model dir of the same architecture>"
                         | {"base": "<HF model dir>", "adapter": "<peft LoRA dir>"}, ...},
     "engine": {"dtype": "bfloat16", "max_model_len": 2048, "seed": 0, ...},  # LLM(...) kwargs
     "chunk_files": {"<chunk>": "<path>", ...},                          # optional
     "requests": [{"id": "...", "prompt_token_ids": [...], "adapter": "<name>" | null,
                   "weights": "<key>" | null, "chunk": "<chunk>" | null,
                   "params": {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 64,
                              "seed": 123, "stop_token_ids": [2]}}, ...]}
One engine serves everything: the requests without `weights` on the model it starts with (and its
adapters, LoRA) in one generate call, then for each `weights` key the engine's weights are
replaced in place by that directory's, or by the base's with the adapter merged on the way in
(vLLM's reload_weights, well under a second for a small model, where starting another engine
costs seconds to tens of seconds), and its requests run. Requests that name a `chunk` run one
generate call per chunk (in the order they come), and each chunk's output lines are written to its
`chunk_files` path as soon as it is done (a stopped step resumes from them: reset/data/chunks.py).
Output line per request: {"id": "...", "texts": [...], "token_counts": [...]}; the last line is
{"_stats": {"engine_start_s": ..., "generate_s": ..., "reload_s": ..., "output_tokens": ...,
            "groups": {"<key or empty>": {"generate_s": ..., "output_tokens": ..., "reload_s": ...}}}}.
Progress goes to stderr as `vllm-worker: <done>/<total>` lines (requests, over all groups).
"""

from __future__ import annotations

import contextlib
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

    if os.path.exists(out_path) and not os.path.isfile(out_path):  # it is replaced: never a device
        raise ValueError(f"{out_path}: the output must be a regular file")
    engine = dict(request.get("engine") or {})
    adapters = dict(request.get("adapters") or {})
    weights = dict(request.get("weights") or {})
    reqs = request["requests"]
    unknown = sorted({r["weights"] for r in reqs if r.get("weights")} - set(weights))
    if unknown:
        raise ValueError(f"requests name weights {unknown} that the request's `weights` does not list")
    t0 = time.monotonic()
    if adapters:
        engine.setdefault("enable_lora", True)
        engine.setdefault("max_lora_rank", _lora_rank_slot(int(request.get("lora_rank") or 16)))
        engine.setdefault("max_loras", len(adapters))
    needs_own = any(not r.get("weights") for r in reqs)
    llm, reused = _engine(LLM, request["model"], engine, request.get("engine_key") or "", needs_own)
    start_s = time.monotonic() - t0
    loras = {}
    if adapters:
        from vllm.lora.request import LoRARequest

        loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(sorted(adapters.items()))}

    groups: dict[str, list[int]] = {}  # weights key ("" = the engine's own) -> request positions
    for i, r in enumerate(reqs):
        groups.setdefault(r.get("weights") or "", []).append(i)
    order = sorted(groups, key=lambda k: k != "")  # the engine's own weights first: no reload back
    outputs: list = [None] * len(reqs)
    bar = _progress_bar(len(reqs))
    stats_groups: dict[str, dict] = {}
    chunk_files = dict(request.get("chunk_files") or {})
    for key in order:
        idx = groups[key]
        reload_s = 0.0
        if key:
            t = time.monotonic()
            _load_weights(llm, weights[key])
            if _CACHE:
                _CACHE["loaded"] = weights[key]
            reload_s = time.monotonic() - t
        parts: dict[str, list[int]] = {}  # chunk -> its requests: one generate call each, saved when done
        for i in idx:
            parts.setdefault(reqs[i].get("chunk") or "", []).append(i)
        gen_s, tokens = 0.0, 0
        for chunk, part in parts.items():
            prompts = [TokensPrompt(prompt_token_ids=reqs[i]["prompt_token_ids"]) for i in part]
            params = [SamplingParams(**dict(reqs[i]["params"])) for i in part]
            lora_requests = [loras[reqs[i]["adapter"]] if reqs[i].get("adapter") else None for i in part]
            t1 = time.monotonic()
            outs = llm.generate(prompts, params, lora_request=lora_requests if loras else None,
                                use_tqdm=bar.for_group(len(part)))
            gen_s += time.monotonic() - t1
            for i, o in zip(part, outs, strict=True):
                outputs[i] = o
            tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
            if chunk in chunk_files:
                _write_lines(chunk_files[chunk], [_row(reqs[i], outputs[i]) for i in part])
        stats_groups[key] = {"generate_s": gen_s, "reload_s": reload_s, "output_tokens": tokens}
    stats = {"engine_start_s": start_s, "engine_reused": reused,
             "generate_s": sum(g["generate_s"] for g in stats_groups.values()),
             "reload_s": sum(g["reload_s"] for g in stats_groups.values()),
             "output_tokens": sum(g["output_tokens"] for g in stats_groups.values()),
             "groups": stats_groups}
    _write_lines(out_path, [_row(r, o) for r, o in zip(reqs, outputs, strict=True)] + [{"_stats": stats}])
    return stats


def _row(req: dict, out) -> dict:
    return {"id": req["id"], "texts": [c.text for c in out.outputs],
            "token_counts": [len(c.token_ids) for c in out.outputs]}


def _write_lines(path: str, rows: list) -> None:
    """JSON lines under a temporary name, flushed and renamed: a file that exists is whole (the
    chunk files of reset/data/chunks.py are read on the next attempt of a stopped step)."""
    tmp = f"{path}.part"
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# Server mode keeps its engine between requests: {"llm", "engine" (its kwargs), "key", "loaded" (the
# weights now in it: a directory or a {"base", "adapter"} spec)}; empty when there is none.
_CACHE: dict = {}
_AT_LEAST = ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "max_lora_rank", "max_loras")
_IGNORED = ("seed",)  # every request carries its own seed; the engine's only seeds requests without one


def _engine(llm_class, model: str, engine: dict, key: str, needs_own: bool = True):
    """(an engine holding `model`'s weights, whether it was reused). Outside server mode a new one.
    In server mode the engine of the previous request is reused when `key` (the architecture and
    tokenizer, computed by the caller) is the same and its settings serve this request (the same,
    or larger limits), with `model`'s weights swapped in when others are loaded; else it is
    replaced."""
    if _CACHE:
        if key and key == _CACHE["key"] and _fits(_CACHE["engine"], engine):
            if _CACHE["loaded"] != model and needs_own:  # (no request on `model` itself: its swaps follow)
                _load_weights(_CACHE["llm"], model)
                _CACHE["loaded"] = model
            return _CACHE["llm"], True
        _free_engine()
    llm = llm_class(model=model, **engine)
    if _SERVING:
        _CACHE.update(llm=llm, engine=dict(engine), key=key, loaded=model)
    return llm, False


def _free_engine() -> None:
    import gc

    _CACHE.clear()
    gc.collect()


def _fits(have: dict, want: dict) -> bool:
    """Whether an engine made with `have` serves a request made for `want`: the same settings, or
    at least the limits asked for."""
    for k in (set(have) | set(want)) - set(_IGNORED):
        if k in _AT_LEAST:
            if (want.get(k) or 0) > (have.get(k) or 0):
                return False
        elif have.get(k) != want.get(k):
            return False
    return True


def _load_weights(llm, spec) -> None:
    """Replace the engine's weights in place (same architecture) with those of `spec`: a model
    directory, or {"base": dir, "adapter": peft LoRA dir} for the base with the adapter merged
    on the way in (merged_weights), so no merged copy is written. Then drop everything derived from
    the old weights: the prefix cache, and on the CPU the packed copies that vLLM makes of layers
    the checkpoint does not hold (a tied LM head packs the embedding's weight for its matmul;
    reload_weights re-processes only the layers it loads, so that copy would stay the old model's)."""
    if isinstance(spec, dict):
        kwargs = {"weights_iterator": merged_weights(spec["base"], spec["adapter"]), "is_checkpoint_format": True}
    else:
        kwargs = {"weights_path": spec, "is_checkpoint_format": True}
    llm.collective_rpc("reload_weights", kwargs=kwargs)
    if _on_cpu(llm):
        llm.collective_rpc(_repack_cpu_layers)
    llm.reset_prefix_cache()


_LORA_UNSUPPORTED = ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
                     "trainable_token_indices", "layer_replication", "lora_bias", "target_parameters",
                     "use_qalora", "alora_invocation_tokens")


def lora_merge_unsupported(adapter: str) -> str:
    """Why merged_weights cannot merge this adapter ("" when it can): it merges plain LoRA only
    (W + s * B @ A on linear weights); the rest (DoRA, extra trained modules, per-module ranks...)
    goes through peft's merge."""
    try:
        with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        return f"adapter_config.json: {exc}"
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"peft_type {cfg.get('peft_type')}"
    used = [k for k in _LORA_UNSUPPORTED if cfg.get(k)]
    if used:
        return "uses " + ", ".join(used)
    if not os.path.exists(os.path.join(adapter, "adapter_model.safetensors")):
        return "no adapter_model.safetensors"
    return ""


def merged_weights(base: str, adapter: str):
    """(name, tensor) for every weight of the model in `base` with the LoRA adapter in `adapter`
    merged, as peft's merge computes it: W + scale * B @ A in fp32, scale = lora_alpha / r
    (lora_alpha / sqrt(r) with rsLoRA). Merged tensors stay fp32; the engine casts them to its
    dtype as it would a checkpoint's (peft's merge_to saves the fp32 merge cast the same way)."""
    import glob
    import math
    import re

    import torch
    from safetensors.torch import load_file

    why = lora_merge_unsupported(adapter)
    if why:
        raise ValueError(f"{adapter}: cannot merge this adapter in the engine: {why}")
    with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(os.path.join(adapter, "adapter_model.safetensors")).items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight", key)
        if m is None:
            raise ValueError(f"{adapter}: adapter tensor {key} is not a LoRA A/B matrix")
        pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = tensor
    files = sorted(glob.glob(os.path.join(base, "*.safetensors")))
    if not files:
        raise ValueError(f"{base}: no *.safetensors weights")
    seen = set()
    for f in files:
        for name, w in load_file(f).items():
            ab = pairs.get(name)
            if ab is not None:
                if set(ab) != {"A", "B"}:
                    raise ValueError(f"{adapter}: {name} has lora_{''.join(ab)} only")
                w = w.float() + scale * (ab["B"].float() @ ab["A"].float())
                seen.add(name)
            yield name, w
    missing = sorted(set(pairs) - seen)
    if missing:
        raise ValueError(f"{adapter}: its LoRA targets {missing[:3]} are not weights of {base}")


def _on_cpu(llm) -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except ImportError:
        return False


def _repack_cpu_layers(worker) -> int:
    """On the engine's worker: re-run the weight processing of every layer that kept its weight
    beside a packed copy (embeddings and tied heads), so the copy matches the weight."""
    model = worker.model_runner.get_model()
    n = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if (hasattr(module, "cpu_linear") and method is not None and weight is not None
                and weight.ndim == 2 and weight.numel() > 0):
            method.process_weights_after_loading(module)
            n += 1
    return n


def _lora_rank_slot(rank: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set of sizes: the smallest that holds `rank`."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    return rank


class _progress_bar:  # noqa: N801 - used like the function it replaced
    """tqdm stand-ins for LLM.generate that print `vllm-worker: done/total` (finished requests,
    counted over every generate call of the run) to stderr at most once a second, so each call
    keeps its whole batch and the step still sees one progress count."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.last = total, 0, 0.0

    def for_group(self, size: int):
        from tqdm import tqdm

        outer, base = self, self.done

        class Bar(tqdm):
            def __init__(self, *args, **kwargs):
                kwargs["disable"] = False
                kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - tqdm's own drawing goes nowhere
                super().__init__(*args, **kwargs)

            def update(self, n=1):
                out = super().update(n)
                outer.done = base + min(self.n, size)
                now = time.monotonic()
                if outer.done >= outer.total or self.n >= size or now - outer.last >= 1.0:
                    outer.last = now
                    _emit(f"vllm-worker: {outer.done}/{outer.total}")
                return out

        return Bar


_SERVING = False


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_emit = _print_stderr  # a line for the step that asked (progress); in server mode, its connection


def serve(sock_path: str, idle_s: float = 1800.0, keep_s: float = 20.0) -> int:
    """Server mode: one worker process for a whole pipeline run, so a step pays neither vLLM's
    import nor a process start and shutdown, and consecutive requests share an engine (weights
    swapped in). Listens on a Unix socket (nothing on the network); a client sends one JSON line
    {"request": "<request.json>", "out": "<out.jsonl>"}, receives `vllm-worker: d/t` progress
    lines and ends on `vllm-worker-done: {stats}` or `vllm-worker-error: <reason>`. One request
    at a time. An engine idle for `keep_s` seconds is freed (its weights and KV cache); the
    process exits after `idle_s` without a request, and within a fraction of a second when its
    parent is gone (exit_with_parent, even mid-request)."""
    import socket
    import traceback

    global _SERVING, _emit
    _SERVING = True
    import vllm  # noqa: F401 - the import (seconds) happens now, while the run does other things

    parent = os.getppid()
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    os.chmod(sock_path, 0o600)
    srv.listen(8)
    srv.settimeout(2.0)
    print(f"vllm-worker: serving on {sock_path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                if os.getppid() != parent or time.monotonic() - last > idle_s:
                    return 0
                if _CACHE and time.monotonic() - last >= keep_s:
                    _free_engine()
                    print(f"vllm-worker: engine freed after {keep_s:.0f}s idle", file=sys.stderr, flush=True)
                continue
            with conn:
                out = conn.makefile("w", encoding="utf-8", buffering=1)

                def emit(line: str, _out=out) -> None:
                    _out.write(line + "\n")
                    _out.flush()

                _emit = emit
                try:
                    ask = json.loads(conn.makefile("r", encoding="utf-8").readline() or "{}")
                    with open(ask["request"], encoding="utf-8") as fh:
                        request = json.load(fh)
                    t0 = time.monotonic()
                    stats = run(request, ask["out"])
                    print(f"vllm-worker: served {len(request['requests'])} requests in {time.monotonic() - t0:.1f}s "
                          f"(engine {'reused' if stats.get('engine_reused') else 'started'})",
                          file=sys.stderr, flush=True)
                    emit("vllm-worker-done: " + json.dumps(stats))
                except BrokenPipeError:  # the client went away (its step was stopped)
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported to the client, the server goes on
                    traceback.print_exc()
                    _CACHE.clear()  # an engine that failed is not trusted again
                    with contextlib.suppress(OSError):
                        emit(f"vllm-worker-error: {type(exc).__name__}: {exc}".replace("\n", " ")[:2000])
                    if isinstance(exc, KeyboardInterrupt | SystemExit):
                        raise
                finally:
                    _emit = _print_stderr
                if keep_s <= 0 and _CACHE:
                    _free_engine()
                last = time.monotonic()
    finally:
        srv.close()
        with contextlib.suppress(OSError):
            os.unlink(sock_path)


def exit_with_parent(interval_s: float = 0.2) -> None:
    """End this worker (and the engine processes it started) as soon as the process that started it
    is gone: a step killed outright, a local run's driver killed with `kill -9`. A daemon thread
    polls the parent pid, whatever the main thread is doing (importing vLLM, a long generate call);
    a worker that leads its own process group (as its starters make it) takes the group with it."""
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)  # polling the parent's pid (Linux has no portable parent-death event)
        with contextlib.suppress(OSError, ValueError):
            print(f"vllm-worker: parent {parent} is gone: exiting", file=sys.stderr, flush=True)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="vllm-worker-parent", daemon=True).start()


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # our modules are not vllm
    exit_with_parent()
    if len(argv) == 2 and argv[0] == "--serve":
        return serve(argv[1], float(os.environ.get("RESET_VLLM_SERVER_IDLE_S", "1800")),
                     float(os.environ.get("RESET_VLLM_ENGINE_KEEP_S", "20")))
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        request = json.load(fh)
    run(request, argv[1])
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes: the guard is required
    raise SystemExit(main(sys.argv[1:]))
