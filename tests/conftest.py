"""Shared fixtures: a tiny random Llama (no download), the demo data, a real S3 endpoint over
HTTP (moto's server mode) and a real `mlflow server` process, all on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def wait_for(what: str, cond, timeout: float, poll: float = 0.1):
    """cond()'s first true value, polled until `timeout` seconds; the test fails after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)  # polling a condition with a deadline
    pytest.fail(f"timed out waiting for {what}")


@contextlib.contextmanager
def server_process(cmd: list[str], health_url: str, log_path: Path, env: dict[str, str], timeout_s: float, what: str):
    """Start a server subprocess, wait (bounded) until `health_url` answers 200, stop it after."""
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with urllib.request.urlopen(health_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n" + log_path.read_text()[-4000:])
            time.sleep(0.5)  # polling a condition with a deadline
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
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
def demo():
    """(instruction examples, grounded examples): a small seeded demo set."""
    return build_demo(seed=0, n_instruction=40, n_grounded=40)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    cmd = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", "s3://mlflow/artifacts"]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, url + "/health", root / "server.log", env, 90, "mlflow server"):
        yield url


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
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--max-model-len", "2048", "--dtype", "float32"]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, url + "/health", log_path, env, 240, "vLLM server"):
        yield f"{url}/v1", "smollm2"
