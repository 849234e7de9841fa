"""The vLLM worker process (vllm_worker.py, in vLLM's own environment on a CPU machine): where its
Python is, its environment, one request run by a worker of its own (`run_worker`) or by the one
worker a local run keeps for all its steps (`EngineServer`, found through RESET_VLLM_SERVER,
`run_on_server`), and the progress its lines report.
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
from reset.config import GenerateConfig
from reset.errors import ModelError
from reset.models.generation import vllm_worker

WORKER = Path(vllm_worker.__file__)
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def in_process() -> bool:
    return importlib.util.find_spec("vllm") is not None


def worker_python(cfg: GenerateConfig) -> str | None:
    """The Python of a vLLM environment for the worker, or None when there is none."""
    for candidate in (cfg.vllm_python, os.environ.get("RESET_VLLM_PYTHON", ""),
                      str(PROJECT_ROOT / ".venv-vllm" / "bin" / "python")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


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


def ask(sock_path: Path, message: Mapping[str, Any], connect_s: float, stall_s: float,
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


def run_on_server(req_path: str, out_path: str, total: int, label: str, log: Callable[[str], None],
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
    count = progress_counter(req_path, total, label)
    try:
        for line in ask(Path(sock), {"request": req_path, "out": out_path}, connect_s=connect_s, stall_s=stall_s,
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


def progress_counter(req_path: str, total: int, label: str) -> Callable[[str], None]:
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


def run_worker(python: str, req_path: str, out_path: str, env: dict[str, str], total: int, label: str,
                log: Callable[[str], None], stall_s: float = 600.0) -> None:
    """Run the worker in vLLM's environment, in a process group of its own; its log goes to ours,
    its progress to the progress bar. A worker that prints nothing for `stall_s` seconds (vLLM's
    engine process died and the client waits forever) or is interrupted is killed with its whole
    group (the engine's processes too), never left behind."""
    import queue
    import signal
    import threading

    count = progress_counter(req_path, total, label)
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
        raise ModelError(
            f"the vLLM worker ({python}) printed nothing for {stall_s:.0f}s (its engine died?); killed it. "
            "Last lines:\n" + "\n".join(tail)
        )
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
