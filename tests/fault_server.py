"""A local OpenAI-compatible chat server that injects faults, for testing and benchmarking judges.

    with FaultServer(FaultConfig(latency_s=0.05, fail_rate=0.3, seed=1)) as server:
        client = OpenAI(base_url=server.base_url, api_key="EMPTY")
        ...
        server.successes      # {prompt key: number of 200 answers delivered}

Bound to 127.0.0.1 on a free port, served by a stdlib ThreadingHTTPServer in a thread, stopped
(and every sleeping handler woken) when the context exits.

POST /v1/chat/completions answers like a chat-completion endpoint, with `usage`. What happens to a
request is decided by a random generator seeded with (seed, prompt key, how many times this prompt
was seen before), so a run is reproducible whatever order concurrent requests arrive in:
  * with probability `fail_rate` one of `fail_kinds`: "429" (with a Retry-After header), "500",
    "503" or "timeout" (the handler sleeps `hang_s`, longer than the client's timeout, then closes
    the connection without answering);
  * otherwise, after `latency_s`, a 200 whose content is `reply(user_text, attempt)` or by default
    {"rationale": ..., "score": expected_score(user_text)}.
With `reject_response_format` a request that carries `response_format` gets a 400 (as servers
without structured-output support answer), and is counted in `stats["rejected_response_format"]`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAIL_KINDS = ("429", "500", "503", "timeout")


def prompt_key(messages: Sequence[dict[str, Any]]) -> str:
    """The identity of a prompt: sha256 of its messages (role and content)."""
    canon = json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def expected_score(user_text: str) -> int:
    """The score (1-10) the default reply gives a prompt: derived from its text, so deterministic."""
    return int(hashlib.sha256(user_text.encode()).hexdigest()[:8], 16) % 10 + 1


@dataclass
class FaultConfig:
    latency_s: float = 0.0
    fail_rate: float = 0.0
    fail_kinds: Sequence[str] = FAIL_KINDS
    fail_first: int = 0  # the first N attempts of every prompt fail (kind drawn from fail_kinds)
    retry_after: str | None = "0"  # Retry-After header sent with a 429 (None = no header)
    hang_s: float = 2.0  # how long a "timeout" request sleeps before the server drops it
    seed: int = 0
    reject_response_format: bool = False
    # (user text, index of this attempt for this prompt) -> assistant content; None = JSON score.
    reply: Callable[[str, int], str] | None = None
    models: Sequence[str] = ()  # what GET /v1/models lists (empty: it serves any model name)
    api_key: str | None = None  # when set, a request without "Authorization: Bearer <api_key>" gets 401


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True


class FaultServer:
    """Context manager: starts on enter, stops on exit. Counters are guarded by `lock`."""

    def __init__(self, config: FaultConfig | None = None):
        self.config = config or FaultConfig()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.attempts: Counter[str] = Counter()  # prompt key -> requests seen
        self.successes: Counter[str] = Counter()  # prompt key -> 200 answers delivered
        self.stats: Counter[str] = Counter()  # outcome -> count; "requests" = all
        self.auth_headers: set[str] = set()
        self.bodies: list[dict[str, Any]] = []  # the last request bodies (kept up to 50)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FaultServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self.lock:
            self.attempts.clear()
            self.successes.clear()
            self.stats.clear()

    # --------------------------------------------------------------------------------- handling
    def decide(self, key: str) -> tuple[str, int]:
        """(outcome, attempt index) for the next request of this prompt."""
        cfg = self.config
        with self.lock:
            attempt = self.attempts[key]
            self.attempts[key] += 1
            self.stats["requests"] += 1
        rng = random.Random(f"{cfg.seed}|{key}|{attempt}")
        if attempt < cfg.fail_first or (cfg.fail_rate > 0 and rng.random() < cfg.fail_rate):
            return rng.choice(list(cfg.fail_kinds)), attempt
        return "ok", attempt


class _Handler(BaseHTTPRequestHandler):
    owner: FaultServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": "fault", "code": status}}, headers)

    def _refused(self) -> bool:
        key = self.owner.config.api_key
        if key is not None and self.headers.get("Authorization", "") != f"Bearer {key}":
            self._error(401, "invalid API key")
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path.rstrip("/").endswith("/models"):
            data = [{"id": m, "object": "model"} for m in self.owner.config.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        owner, cfg = self.owner, self.owner.config
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        if self._refused():
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            self._error(400, "invalid request body")
            return
        with owner.lock:
            owner.auth_headers.add(self.headers.get("Authorization", ""))
            owner.bodies = [*owner.bodies[-49:], body]
        if cfg.reject_response_format and "response_format" in body:
            with owner.lock:
                owner.stats["rejected_response_format"] += 1
            self._error(400, "response_format is not supported by this server")
            return
        key = prompt_key(messages)
        outcome, attempt = owner.decide(key)
        with owner.lock:
            owner.stats[outcome] += 1
        if outcome == "timeout":
            owner.stop_event.wait(cfg.hang_s)
            self.close_connection = True  # drop it without an answer
            return
        if cfg.latency_s > 0:
            owner.stop_event.wait(cfg.latency_s)
        if outcome == "429":
            headers = {"Retry-After": cfg.retry_after} if cfg.retry_after is not None else {}
            self._error(429, "rate limited", headers)
            return
        if outcome != "ok":  # "500", "503" or any other status code
            self._error(int(outcome), f"injected HTTP {outcome}")
            return
        user_text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
        if cfg.reply is not None:
            content = cfg.reply(user_text, attempt)
        else:
            content = json.dumps({"rationale": "deterministic test score", "score": expected_score(user_text)})
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        usage = {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(content) // 4 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        payload = {
            "id": f"chatcmpl-{key[:12]}-{attempt}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fault-model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        try:
            self._send_json(200, payload)
        except OSError:  # the client went away: not delivered
            return
        with owner.lock:
            owner.successes[key] += 1
