"""Shared fixtures: a tiny random Llama (no download), the demo data, a real S3 endpoint over
HTTP (moto's server mode) and a real `mlflow server` process, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reset.data.demo import build_demo

# Never reach a hub, whatever a library would like to do.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parent.parent

# A shell starts a background job (`make test &`) with SIGINT ignored, and an ignored signal stays
# ignored across exec: every run the tests start would then ignore the Ctrl-C they send it. The
# tests send SIGINT as a terminal does, so their processes must start with its default action.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Run with several pytest workers (make test: `-n 2 --dist loadfile`), each worker and everything it
# starts keeps to its own share of the CPUs: torch's and vLLM's thread pools size themselves from the
# affinity mask (reset.runtime, vllm_server.worker_env), so two workers on two cores no longer run two
# two-thread pools on two cores, whose spinning OpenMP threads slowed each other several times over.
# RESET_TEST_PIN=0 leaves the mask alone.
def _pin_worker() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or count < 2 or os.environ.get("RESET_TEST_PIN", "1") == "0":
        return
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[int(worker[2:]) % count::count] if len(cores) >= count else []
    if mine:
        os.sched_setaffinity(0, mine)


_pin_worker()

# The files whose runs take minutes go first, so that a worker is not left with one of them at the
# end while the other idles (pytest-xdist's loadfile hands out files in collection order).
SLOW_FIRST = ("test_fault_pipeline.py", "test_shards.py", "test_e2e.py", "test_generation.py", "test_resume.py",
              "test_vllm_judge.py", "test_kfp_api.py", "test_promotion.py", "test_training.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def wait_for(what: str, cond, timeout: float, poll: float = 0.1):
    """cond()'s first true value, polled until `timeout` seconds; the test fails after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)  # polling a condition with a deadline
    pytest.fail(f"timed out waiting for {what}")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    """http://127.0.0.1:<the port the server chose>"""


_UVICORN = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:[1-9][0-9]*)")


def uvicorn_url(proc: subprocess.Popen, log: str) -> str | None:
    """The address a uvicorn server started with --port 0 reports once it listens."""
    m = _UVICORN.search(log)
    return m.group(1) if m else None


def listening_url(proc: subprocess.Popen, log: str) -> str | None:
    """The address `proc` itself listens on (a server that binds port 0 and does not print it)."""
    import psutil

    try:
        ports = {c.laddr.port for c in psutil.Process(proc.pid).net_connections(kind="tcp4")
                 if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1"}
    except psutil.NoSuchProcess:
        return None
    return f"http://127.0.0.1:{ports.pop()}" if len(ports) == 1 else None


@contextlib.contextmanager
def server_process(cmd: list[str], url: Callable[[subprocess.Popen, str], str | None], log_path: Path,
                   env: dict[str, str], timeout_s: float, what: str, health: str = "/health") -> Iterator[Server]:
    """Start a server subprocess that binds a port of its own choosing (port 0), find its address
    (`url(proc, log so far)`), wait until `health` answers 200 there, and stop it by its PID after.
    The timeout only guards against a server that never comes up."""
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    try:
        base = None
        while True:
            base = base or url(proc, log_path.read_text(errors="replace"))
            if base:
                try:
                    with urllib.request.urlopen(base + health, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n" + log_path.read_text()[-4000:])
            time.sleep(0.5)  # polling a condition with a deadline
        yield Server(proc, base)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> Path:
    from reset.models.loading import resolve_model

    return resolve_model("builtin:tiny-llama", str(cache_dir))


@pytest.fixture(scope="session")
def other_tiny_models(cache_dir) -> dict[int, Path]:
    """Tiny random Llamas of the same shape and tokenizer as tiny_model_dir, other weights (seeds 1, 2):
    challengers whose answers differ from the champion's."""
    from reset.models.loading import build_tiny_llama

    out = {}
    for seed in (1, 2):
        path = cache_dir / f"tiny-llama-seed{seed}"
        if not (path / "config.json").exists():
            path.mkdir(parents=True, exist_ok=True)
            build_tiny_llama(path, seed=seed)
        out[seed] = path
    return out


@pytest.fixture(scope="session")
def vllm_tiny_dir(tiny_model_dir, cache_dir) -> Path:
    """tiny_model_dir's config (2 layers, its tokenizer) with attention heads of size 64, which vLLM's
    CPU build has kernels for (the builtin's 16 has none), random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = cache_dir / "tiny-llama-head64"
    if not (out / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        cfg = LlamaConfig.from_pretrained(tiny_model_dir)
        cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = 128, 2, 1, 256
        cfg.head_dim = 64
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def demo():
    """(instruction examples, grounded examples): a small seeded demo set."""
    return build_demo(seed=0, n_instruction=40, n_grounded=40)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")}
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint,
    })
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, s3, tmp_path_factory):
    """A real `mlflow server` process (SQLite backend, artifacts proxied to S3 on moto)."""
    s3.create_bucket(Bucket="mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    cmd = mlflow_server_cmd(f"sqlite:///{root / 'mlflow.db'}", "s3://mlflow/artifacts")
    with server_process(cmd, uvicorn_url, root / "server.log", mlflow_server_env(), 90, "mlflow server") as server:
        yield server.url


def mlflow_server_cmd(backend_uri: str, artifacts: str) -> list[str]:
    """`mlflow server` on 127.0.0.1, on a port it picks itself (uvicorn prints it)."""
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    return [mlflow_bin, "server", "--host", "127.0.0.1", "--port", "0", "--workers", "1",
            "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts]


def mlflow_server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (tests/pg_mlflow.py: Debian's binaries, 127.0.0.1), with
    the role `mlflow` and its database `mlflow`; stopped by its PID at the end."""
    from .pg_mlflow import postgres_server

    with postgres_server() as pg:
        yield pg


@pytest.fixture(scope="session")
def vllm_server(cache_dir, tmp_path_factory):
    """vLLM's CPU build serving the demo model (SmolLM2-135M-Instruct) through its
    OpenAI-compatible server on 127.0.0.1. Its own venv (`make vllm`): RESET_VLLM_PYTHON or
    .venv-vllm/bin/python. Yields (base_url, served model name)."""
    from reset.models.loading import resolve_model

    python = os.environ.get("RESET_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if not os.path.exists(python):
        pytest.fail(f"no vLLM environment at {python}: run `make vllm` (make test does)")
    model_dir = resolve_model("builtin:smollm2-135m-instruct", str(cache_dir))
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    # port 0: vLLM binds the socket itself before its engine starts (and logs port 0), so the address
    # is read back from the process's listening socket
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", "0", "--enforce-eager",
           "--max-model-len", "2048", "--dtype", "float32"]
    with server_process(cmd, listening_url, log_path, env, 240, "vLLM server") as server:
        yield f"{server.url}/v1", "smollm2"


@pytest.fixture(autouse=True)
def _print_untouched():
    """kfp.local indents its tasks' output by swapping builtins.print for the call and back; a run
    that leaves it swapped indents every later line this process prints (and breaks the tests that
    read their output). The test that leaves it changed fails here."""
    import builtins

    before = builtins.print
    yield
    after, builtins.print = builtins.print, before
    assert after is before, "builtins.print was left replaced (kfp.local's indented_print not undone)"
