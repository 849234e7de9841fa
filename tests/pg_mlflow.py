"""A real PostgreSQL server and an `mlflow server` on it, started the way manifests/base runs them.

    with postgres_server() as pg:                     # initdb + postgres on 127.0.0.1:<a port it could bind>
        ...pg.port, pg.password (the `mlflow` role's; database `mlflow`)
    with manifest_mlflow(pg, tmp, s3_endpoint) as m:  # the manifest's `mlflow db upgrade`, then its server
        ...m.url

PostgreSQL is Debian's (`make test` installs the package `postgresql` when no initdb is found).
initdb runs in a temporary directory as the `postgres` user when the tests run as root (initdb
refuses root), else as the current user; the server listens on 127.0.0.1 only (no Unix socket
outside the temporary directory), and is stopped by its PID (SIGINT: PostgreSQL's fast shutdown,
then SIGKILL after a bound). Every wait is bounded.

`manifest_mlflow` reads manifests/base/mlflow.yaml: the init container's command and the server's
command with `$(VAR)` expanded from the container's env, whose Secret references are filled from
the Secret templates' keys, exactly as the kubelet would. The only substitutions are the cluster
addresses: the Service `mlflow-postgres:5432` -> this PostgreSQL, `--host` / `--port` -> 127.0.0.1
and port 0 (the server picks one; `127.0.0.1:*` added to `--allowed-hosts`, which otherwise stays
as the manifest has it), and
the S3 endpoint -> the tests' moto server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from .conftest import REPO, server_process, uvicorn_url

MANIFEST = REPO / "manifests" / "base" / "mlflow.yaml"
SECRETS = REPO / "manifests" / "secrets"
POSTGRES_SERVICE = "mlflow-postgres:5432"  # the Service the manifest's backend URI names


def postgres_bindir() -> Path:
    """Debian's PostgreSQL binaries (the newest installed major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb): `apt-get install -y postgresql` (make test does)")


@dataclass
class Postgres:
    port: int
    password: str
    pid: int
    log: Path


def _run_as() -> dict:
    """subprocess arguments that run a command as `postgres` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid}


@contextlib.contextmanager
def postgres_server(timeout_s: float = 60) -> Iterator[Postgres]:
    """initdb a cluster in a new temporary directory, start it on 127.0.0.1 (a port it could bind), create
    the role and database the manifest uses (`mlflow`, owner of database `mlflow`, password auth);
    afterwards stop it by PID and remove the directory."""
    import tempfile

    bindir = postgres_bindir()
    # not under pytest's tmp_path: its parents are private to root, and initdb runs as postgres
    root = Path(tempfile.mkdtemp(prefix="reset-pg-"))
    try:
        with _postgres(root, bindir, timeout_s) as pg:
            yield pg
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(bindir: Path, data: Path, sock: Path, root: Path, as_user: dict, log_path: Path, password: str,
           timeout_s: float):
    """(process, port, a connection as `postgres`, its log file). PostgreSQL cannot bind port 0: a port
    is drawn below Linux's ephemeral range (32768-60999, where clients' ports come from); when another
    server holds it, PostgreSQL exits at once saying it could not bind, and the next draw is tried."""
    import psycopg2

    deadline = time.monotonic() + timeout_s
    for _draw in range(10):
        port = random.randint(20000, 32000)
        log = open(log_path, "w")  # noqa: SIM115 - closed by the caller, or below
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={sock}", "-c", "fsync=off", "-c", "max_connections=60"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, **as_user)
        while proc.poll() is None:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password,
                                        dbname="postgres", connect_timeout=2)
                return proc, port, conn, log
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait(timeout=30)
                    break
                time.sleep(0.2)  # polling a condition with a deadline
        log.close()
        if "could not bind" not in log_path.read_text():
            break
    raise RuntimeError("PostgreSQL did not start:\n" + log_path.read_text()[-4000:])


@contextlib.contextmanager
def _postgres(root: Path, bindir: Path, timeout_s: float) -> Iterator[Postgres]:

    as_user = _run_as()
    data, sock = root / "data", root / "sock"
    sock.mkdir(exist_ok=True)
    password = secrets.token_urlsafe(18)  # URL-safe: the manifest puts it into a URI unquoted
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if as_user:
        entry = pwd.getpwnam("postgres")
        for p in (root, sock, pwfile):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile), "-E", "UTF8",
         "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--no-sync"],
        capture_output=True, text=True, timeout=120, cwd=root, **as_user)
    pwfile.unlink()
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
    log_path = root / "postgres.log"
    proc, port, conn, log = _start(bindir, data, sock, root, as_user, log_path, password, timeout_s)
    try:
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                # what the postgres image does with POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD
                cur.execute("CREATE ROLE mlflow LOGIN PASSWORD %s", (password,))
                cur.execute("CREATE DATABASE mlflow OWNER mlflow")
        finally:
            conn.close()
        yield Postgres(port, password, proc.pid, log_path)
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, checkpoint, exit
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# ----------------------------------------------------------------------------------- the manifest
def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes; unknown stays)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def secret_templates() -> dict[str, set[str]]:
    """Secret name -> the keys its template in manifests/secrets declares."""
    out = {}
    for path in SECRETS.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        out[doc["metadata"]["name"]] = set(doc["stringData"])
    return out


def mlflow_pod() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    return dep["spec"]["template"]["spec"]


def container_env(container: dict, secret_values: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's env as the kubelet builds it: values expanded in order, Secret keys
    resolved (a key the Secret template does not declare is an error, as it is at pod start)."""
    templates = secret_templates()
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(e["value"], env)
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["key"] in templates.get(ref["name"], set()), f"{e['name']}: {ref} not in manifests/secrets"
            env[e["name"]] = secret_values[ref["name"]][ref["key"]]
    return env


@dataclass
class ManifestMlflow:
    url: str
    backend_uri: str
    allowed_hosts: list[str]
    upgrade_seconds: float


@contextlib.contextmanager
def manifest_mlflow(pg: Postgres, root: Path, s3_endpoint: str, timeout_s: float = 120) -> Iterator[ManifestMlflow]:
    """Run the manifest's init container (`mlflow db upgrade`) against `pg`, then its server."""
    root.mkdir(parents=True, exist_ok=True)
    spec = mlflow_pod()
    init = spec["initContainers"][0]
    server = spec["containers"][0]
    secret_values = {
        "reset-mlflow-db": {"password": pg.password},
        "reset-s3": {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": s3_endpoint,
        },
    }
    bindir = os.path.dirname(sys.executable)  # the image's mlflow is this venv's (same pins)
    base_env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "AWS_DEFAULT_REGION")}
    base_env["PATH"] = bindir + os.pathsep + base_env.get("PATH", "")

    def resolve(container: dict) -> tuple[list[str], dict[str, str]]:
        env = container_env(container, secret_values)
        # the cluster address of PostgreSQL -> this server (the only change to the backend URI)
        uri = env["MLFLOW_BACKEND_STORE_URI"]
        assert POSTGRES_SERVICE in uri, uri
        env["MLFLOW_BACKEND_STORE_URI"] = uri.replace(POSTGRES_SERVICE, f"127.0.0.1:{pg.port}")
        env["HOME"] = str(root)  # the manifest's HOME is an emptyDir at /tmp
        cmd = [_expand(a, env) for a in container["command"] + container.get("args", [])]
        return cmd, {**base_env, **env}

    cmd, env = resolve(init)
    assert cmd[:3] == ["mlflow", "db", "upgrade"], cmd
    t0 = time.monotonic()
    up = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    upgrade_seconds = time.monotonic() - t0
    if up.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{up.stderr[-4000:]}")

    cmd, env = resolve(server)
    out, allowed = [], []
    for a in cmd:
        if a.startswith("--host="):
            a = "--host=127.0.0.1"
        elif a.startswith("--port="):
            a = "--port=0"  # the server picks its port and prints it
        elif a.startswith("--allowed-hosts="):
            allowed = a.split("=", 1)[1].split(",")
            a = f"{a},127.0.0.1:*"
        out.append(a)
    assert out[:2] == ["mlflow", "server"], out
    with server_process(out, uvicorn_url, root / "mlflow-server.log", env, timeout_s,
                        "mlflow server (manifest)") as started:
        yield ManifestMlflow(started.url, env["MLFLOW_BACKEND_STORE_URI"], allowed, upgrade_seconds)


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0
