"""A local stand-in for the part of the Kubernetes API a training hand-off uses: namespaced custom
objects (create, get, list, watch, delete). Driven through the official `kubernetes` client.

    with K8sStandIn() as k8s:
        k8s.script = [(0.05, {"conditions": [{"type": "Running", "status": "True"}]}), ...]
        api = k8s.api_client()          # a kubernetes.client.ApiClient pointed at it
        ...
        k8s.requests                    # [(method, path, query dict, body or None)]

Bound to 127.0.0.1 on a free port, served by a stdlib ThreadingHTTPServer in a thread; stopped
(watchers woken) when the context exits. After an object is created, the server plays `script`
on it: each (delay, status) replaces the object's status after the delay, with a new
resourceVersion, as a MODIFIED event. `expire_next_watch` answers the next watch with a 410 Gone
ERROR event, as an API server does when a resourceVersion is too old.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class K8sStandIn:
    def __init__(self) -> None:
        self.script: list[tuple[float, dict[str, Any]]] = []
        self.expire_next_watch = False
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name) -> object
        self.events: list[tuple[int, str, tuple[str, str, str], dict[str, Any]]] = []
        self._rv = 100
        self._cond = threading.Condition()
        self._closed = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # ----------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> K8sStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def api_client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    # ----------------------------------------------------------------------------- state
    def _emit(self, kind: str, key: tuple[str, str, str], obj: dict[str, Any]) -> None:
        with self._cond:
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self.events.append((self._rv, kind, key, json.loads(json.dumps(obj))))
            self._cond.notify_all()

    def _play(self, key: tuple[str, str, str]) -> None:
        for delay, status in list(self.script):
            time.sleep(delay)  # the scripted job's pace
            with self._cond:
                obj = self.objects.get(key)
                if obj is None or self._closed:
                    return
                obj["status"] = status
            self._emit("MODIFIED", key, obj)

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # a watch streams its events as chunks, as the API server does

            def log_message(self, *args) -> None:
                pass

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                  "reason": reason, "message": message})

            def _route(self):
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                # apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>]
                if len(parts) < 6 or parts[0] != "apis" or parts[3] != "namespaces":
                    return None, None, None, query
                return parts[4], parts[5], (parts[6] if len(parts) > 6 else None), query

            def _record(self, body: Any = None) -> None:
                url = urlparse(self.path)
                standin.requests.append((self.command, url.path, {k: v[-1] for k, v in parse_qs(url.query).items()},
                                         body))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"
                self._record(json.loads(raw))
                body = json.loads(raw)
                ns, plural, _, _ = self._route()
                if plural is None:
                    return self._status(404, "NotFound", self.path)
                name = body.get("metadata", {}).get("name", "")
                key = (plural, ns, name)
                if key in standin.objects:
                    return self._status(409, "AlreadyExists", f'{plural} "{name}" already exists')
                body["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": "2026-01-01T00:00:00Z"})
                standin.objects[key] = body
                standin._emit("ADDED", key, body)
                threading.Thread(target=standin._play, args=(key,), daemon=True).start()
                self._json(201, body)

            def do_DELETE(self) -> None:
                length = int(self.headers.get("Content-Length", 0) or 0)
                self._record(json.loads(self.rfile.read(length)) if length else None)
                ns, plural, name, _ = self._route()
                obj = standin.objects.pop((plural, ns, name), None)
                if obj is None:
                    return self._status(404, "NotFound", f'{plural} "{name}" not found')
                standin._emit("DELETED", (plural, ns, name), obj)
                self._json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def do_GET(self) -> None:
                self._record()
                ns, plural, name, query = self._route()
                if plural is None:
                    return self._status(404, "NotFound", self.path)
                if name:
                    obj = standin.objects.get((plural, ns, name))
                    return self._json(200, obj) if obj else self._status(404, "NotFound", f'"{name}" not found')
                if query.get("watch") not in ("true", "1", "True"):
                    items = [o for (p, n, _), o in standin.objects.items() if p == plural and n == ns]
                    return self._json(200, {"items": items, "metadata": {"resourceVersion": str(standin._rv)}})
                self._watch(ns, plural, query)

            def _watch(self, ns: str, plural: str, query: dict[str, str]) -> None:
                wanted = query.get("fieldSelector", "").removeprefix("metadata.name=")
                since = int(query.get("resourceVersion") or 0)
                deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self._stream(ns, plural, wanted, since, deadline)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                self.close_connection = True

            def _chunk(self, event: dict[str, Any]) -> None:
                data = (json.dumps(event) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, ns: str, plural: str, wanted: str, since: int, deadline: float) -> None:
                if standin.expire_next_watch:
                    standin.expire_next_watch = False
                    err = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                       "message": "too old resource version"}}
                    self._chunk(err)
                    return
                sent = since
                while True:
                    with standin._cond:
                        batch = [e for e in standin.events if e[0] > sent and e[2][0] == plural and e[2][1] == ns
                                 and (not wanted or e[2][2] == wanted)]
                        if not batch:
                            left = deadline - time.monotonic()
                            if left <= 0 or standin._closed:
                                return
                            standin._cond.wait(timeout=left)
                            continue
                    for rv, kind, _, obj in batch:
                        self._chunk({"type": kind, "object": obj})
                        sent = rv

        return Handler
