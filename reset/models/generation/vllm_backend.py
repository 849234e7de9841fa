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

from reset import procs, progress, runtime
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


def worker_env(cfg: GenerateConfig, serve_lora: bool = False) -> dict[str, str]:
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_KVCACHE_SPACE": str(cfg.vllm_kv_cache_gb), "TOKENIZERS_PARALLELISM": "false",
           # The engine core in the worker's own process: a second process costs ~15 s of start-up
           # (spawn, vLLM's import again, the handshake) and ~4 s of shutdown on this CPU, for no
           # throughput (measured: docs/bench.md). Except when LoRA adapters are served: vLLM
           # 0.32's CPU build then answers with the base model (tests/test_generation.py), so that
           # path keeps vLLM's default, the core in a process of its own.
           "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if serve_lora else "0"}
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
    """Generate for several models (name -> checkpoint) on the same examples, with as few engines
    as possible: every model of one architecture and tokenizer shares one engine (one worker
    process): LoRA adapters served on their base (`vllm_lora` serve, a GPU's default) or merged
    into the base's weights on their way into the engine (merge, a CPU's default), other
    checkpoints (full fine-tunes) loaded into it in place, one after another. `offset`: see
    common.plan (per-request seeds, so a shard samples exactly what the unsharded run samples for
    its prompts)."""
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
            out.update(_generate_group(members, examples, cfg, model_cfg, how, gpu, log, offset))
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
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


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
    for name in _TOKENIZER_FILES:
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
                    ) -> dict[str, Generation]:
    """One engine for `members`, all of one engine_key. The engine starts on the directory whose
    adapters it serves (or the first plain one); every other set of weights is swapped in
    afterwards."""
    served_on = [m.dir for m in members.values() if m.served is not None]
    if len(set(served_on)) > 1:  # LoRA needs its base loaded; one engine holds one base at a time
        first = {n: m for n, m in members.items() if m.dir == served_on[0]}
        rest = {n: m for n, m in members.items() if n not in first}
        return {**_generate_group(first, examples, cfg, model_cfg, how, gpu, log, offset),
                **_generate_group(rest, examples, cfg, model_cfg, how, gpu, log, offset)}
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
    wire = []
    for name in names:
        for i, r in enumerate(reqs):
            wire.append({"id": f"{name}\t{i}", "prompt_token_ids": r.prompt_ids,
                         "adapter": lora_of.get(name), "weights": weight_key.get(members[name].weights),
                         "params": {"n": r.n, "temperature": r.setting.temperature,
                                    "top_p": r.setting.top_p if r.setting.temperature > 0 else 1.0,
                                    "max_tokens": cfg.max_new_tokens, "seed": r.seed, "stop_token_ids": stops,
                                    "skip_special_tokens": True}})
    request = {"model": str(start), "engine_key": engine_key(start), "adapters": adapters,
               "weights": {k: spec_of[w] for w, k in weight_key.items()},
               "lora_rank": max([_lora_rank(Path(a)) for a in adapters.values()] or [0]),
               "engine": engine_args(cfg, model_cfg, gpu), "requests": wire}
    total = sum(r.n for r in reqs) * len(names)
    label = ", ".join(names)
    log(f"[generate:vllm] {len(examples)} prompts x {len(cfg.grid)} settings x {len(names)} model(s) ({label}) -> "
        f"{total} samples; one engine ({how}, {'GPU' if gpu else 'CPU'}) started on {start}"
        + (f", adapters {sorted(lora_of.values())}" if adapters else "")
        + (f", {len(weight_key)} more set(s) of weights loaded into it in place"
           + (f" ({sum(1 for m in members.values() if m.merged)} with their adapter merged as they load)"
              if any(m.merged for m in members.values()) else "") if weight_key else ""))
    with tempfile.TemporaryDirectory(prefix="reset-vllm-") as tmp:
        req_path, out_path = os.path.join(tmp, "request.json"), os.path.join(tmp, "out.jsonl")
        with open(req_path, "w", encoding="utf-8") as fh:
            json.dump(request, fh)
        t0 = time.monotonic()
        if in_process():
            vllm_worker.run(request, out_path)
        elif adapters or not _run_on_server(req_path, out_path, total, label, log):  # (the server runs
            # its engine core in-process, which serves no LoRA adapters: see worker_env)
            _run_worker(worker_python(cfg) or "", req_path, out_path, worker_env(cfg, serve_lora=bool(adapters)),
                        total, label, log)
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
    start_s = float(stats.get("engine_start_s", 0.0))
    groups = stats.get("groups") or {}
    out = {}
    for name in names:
        key = weight_key.get(members[name].weights, "")
        g = groups.get(key, {})
        gen_s = float(g.get("generate_s", stats.get("generate_s", wall)))
        tokens = int(g.get("output_tokens", stats.get("output_tokens", 0)))
        reload_s = float(g.get("reload_s", 0.0))
        log(f"[generate:vllm] {name}: {sum(r.n for r in reqs)} samples, {tokens} tokens in {gen_s:.1f}s "
            f"({tokens / max(gen_s, 1e-9):.0f} tokens/s" + (", one call with its base's adapters" if adapters and not key
                                                             else "") + ")"
            + (f", weights swapped in {reload_s:.1f}s" if key else ""))
        texts = [by_id[f"{name}\t{i}"] for i in range(len(reqs))]
        cands = candidates(reqs, texts, cfg, backend="vllm", model_name=name, order=examples)
        out[name] = Generation(cands, {"backend": "vllm", "engine_start_s": start_s, "generate_s": gen_s,
                                       "output_tokens": tokens, "tokens_per_s": tokens / gen_s if gen_s else 0.0,
                                       "reload_s": reload_s, "prompts_cut": cut, "wall_s": wall,
                                       "engine_reused": bool(stats.get("engine_reused", False)),
                                       "models_in_engine": len(names)})
    log(f"[generate:vllm] {total} samples from {len(names)} model(s) in one engine: engine start {start_s:.1f}s, "
        f"sampling {float(stats.get('generate_s', 0.0)):.1f}s, weight swaps {float(stats.get('reload_s', 0.0)):.1f}s, "
        f"wall {wall:.1f}s")
    return out


SERVER_ENV = "RESET_VLLM_SERVER"
SERVER_PROC_ENV = "RESET_VLLM_SERVER_PROC"  # the server process's procs.identity, as JSON


class EngineServer:
    """One vLLM worker for a whole local pipeline run (a CPU machine's worker environment): the
    worker in server mode (vllm_worker.serve) on a Unix socket in a private temporary folder,
    found by the steps through RESET_VLLM_SERVER. A step then sends its request instead of starting
    a worker (vLLM's import, a process start and shutdown: about 8 s here); requests within
    `keep_s` seconds of each other share one engine, their weights swapped in, and an engine idle
    longer is freed so that training steps do not run beside it. A step that cannot reach the
    server starts its own worker.

        server = EngineServer.start(python, run_dir / "vllm", env, keep_s)  # its log: vllm/engine.log
        ...                                     # steps run with server.env in their environment
        server.stop()                           # by its process group; it also exits if we die
    """

    def __init__(self, proc: subprocess.Popen, socket_path: Path, log_path: Path) -> None:
        self.proc, self.socket, self.log_path = proc, socket_path, log_path

    @property
    def env(self) -> dict[str, str]:
        """What the steps need to find the server (and to know it is gone)."""
        return {SERVER_ENV: str(self.socket), SERVER_PROC_ENV: json.dumps(procs.identity(self.proc.pid))}

    @classmethod
    def start(cls, python: str, folder: Path, env: Mapping[str, str], keep_s: float = 20.0) -> EngineServer:
        folder.mkdir(parents=True, exist_ok=True)
        # A Unix socket's path has at most 107 bytes: a short private folder, not the run folder.
        sock = Path(tempfile.mkdtemp(prefix="reset-vllm-")) / "engine.sock"
        log_path = folder / "engine.log"
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen([python, str(WORKER), "--serve", str(sock)], stdin=subprocess.DEVNULL,
                                    stdout=log_fh, stderr=subprocess.STDOUT,
                                    env={**env, "RESET_VLLM_ENGINE_KEEP_S": str(keep_s)}, start_new_session=True)
        return cls(proc, sock, log_path)

    def stop(self, timeout_s: float = 10.0) -> None:
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.socket.unlink()
        with contextlib.suppress(OSError):
            self.socket.parent.rmdir()


def engine_server_python(cfgs: Sequence[GenerateConfig]) -> str | None:
    """The worker Python an engine server would run with, or None where the steps would not use
    one (vLLM in-process, no vLLM environment, or every config on the hf backend)."""
    if in_process():
        return None
    for cfg in cfgs:
        if cfg.backend != "hf" and (python := worker_python(cfg)):
            return python
    return None


def _ask(sock_path: Path, message: Mapping[str, Any], connect_s: float, stall_s: float,
         server: dict[str, str] | None = None):
    """Send one request line to the engine server and yield its reply lines. Retries the connection
    for `connect_s` seconds (the server is still importing vLLM) while the `server` process (its
    procs.identity, when given) lives; raises OSError when it cannot connect or the server goes
    silent for `stall_s` seconds."""
    import socket

    deadline = time.monotonic() + connect_s
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock_path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            if time.monotonic() >= deadline or (server is not None and procs.alive(server) is False):
                raise
            time.sleep(0.5)
    with conn:
        conn.settimeout(stall_s)
        conn.sendall((json.dumps(dict(message)) + "\n").encode())
        for line in conn.makefile("r", encoding="utf-8"):
            line = line.rstrip("\n")
            yield line
            if line.startswith(("vllm-worker-done: ", "vllm-worker-error: ")):
                return
        raise ConnectionError("the engine server closed the connection without an answer")


def _run_on_server(req_path: str, out_path: str, total: int, label: str, log: Callable[[str], None],
                   stall_s: float = 600.0, connect_s: float = 120.0) -> bool:
    """Run the request on the run's engine server (RESET_VLLM_SERVER) when there is one: True when
    it answered, False (with a note) when there is none or it cannot be reached, and the caller
    starts its own worker. A server that reports an error raises ModelError."""
    sock = os.environ.get(SERVER_ENV, "")
    if not sock:
        return False
    if not os.path.exists(sock) and not os.path.isdir(os.path.dirname(sock)):
        log(f"[generate:vllm] note: the run's engine server socket {sock} is gone; starting a worker")
        return False
    count = _progress_counter(req_path, total, label)
    try:
        for line in _ask(Path(sock), {"request": req_path, "out": out_path}, connect_s=connect_s, stall_s=stall_s,
                         server=procs.identity_from_env(SERVER_PROC_ENV)):
            if line.startswith("vllm-worker-error: "):
                raise ModelError(f"the run's vLLM engine server failed: {line.split(': ', 1)[1]} "
                                 "(its log: the run folder's vllm/engine.log)")
            if line.startswith("vllm-worker-done: "):
                log(f"[generate:vllm] served by the run's engine server ({sock})")
                return True
            count(line)
            sys.stdout.write(line + "\n")
    except OSError as exc:
        log(f"[generate:vllm] note: the run's engine server at {sock} did not answer ({exc}); starting a worker")
        return False
    return False


def _progress_counter(req_path: str, total: int, label: str) -> Callable[[str], None]:
    """What turns the worker's `vllm-worker: <requests done>/<total>` lines into the step's
    progress bar in samples (a request may ask for several); other lines pass by."""
    bar = progress.Progress(total, "samples", label)
    with open(req_path, encoding="utf-8") as fh:
        samples_per_req = [r["params"]["n"] for r in json.load(fh)["requests"]]

    def count(line: str) -> None:
        done, sep, _ = line.removeprefix("vllm-worker: ").partition("/")
        if line.startswith("vllm-worker: ") and sep and done.isdigit():
            bar.update(sum(samples_per_req[:int(done)]))

    return count


def _run_worker(python: str, req_path: str, out_path: str, env: dict[str, str], total: int, label: str,
                log: Callable[[str], None], stall_s: float = 600.0) -> None:
    """Run the worker in vLLM's environment, in a process group of its own; its log goes to ours,
    its progress to the progress bar. A worker that prints nothing for `stall_s` seconds (vLLM's
    engine process died and the client waits forever) or is interrupted is killed with its whole
    group (the engine's processes too), never left behind."""
    import queue
    import signal
    import threading

    count = _progress_counter(req_path, total, label)
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
            count(line)
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


def gpu_visible() -> bool:
    """torch sees a CUDA or ROCm device. A CPU build of torch (its version's local tag `+cpu`)
    answers False without importing torch: about 1.6 s a step that never uses it (generate and
    evaluate through the vLLM worker)."""
    if "torch" not in sys.modules:
        from importlib.metadata import PackageNotFoundError, version

        try:
            if version("torch").endswith("+cpu"):
                return False
        except PackageNotFoundError:
            return False
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
