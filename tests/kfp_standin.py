"""A local stand-in for the part of the Kubeflow Pipelines v2beta1 REST API that `kfp.Client`
(kfp 2.17) calls for upload, submit, schedule and wait: healthz, pipelines (list, upload,
upload_version, list versions), experiments (list, create), runs (create, get) and recurring runs
(create). Driven through the real client.

    with KfpStandIn() as kfp_api:
        kfp_api.run_script = [("RUNNING", {"start-run": "RUNNING"}), ("SUCCEEDED", {...})]
        ... kfp.Client(host=kfp_api.url) ...
        kfp_api.requests                 # [Request(method, path, query, headers, body, raw)]

Bound to 127.0.0.1 on a free port, served by a stdlib ThreadingHTTPServer in a thread, stopped
when the context exits. Each GET of a run plays the next entry of `run_script` (the last one
stays): the run's state and its tasks' states. Uploads are multipart/form-data (`uploadfile`);
their file is parsed as YAML documents into `body["uploadfile"]`. Uploaded pipelines and inline
run specs are read strictly against KFP's protobuf schemas (tests/kfp_schemas.py) and refused with a
400, as the API server refuses a spec it cannot read. Filters are KFP's JSON predicates on
display_name (EQUALS), as the client sends them.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from .kfp_schemas import problems

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes = field(repr=False, default=b"")


class KfpStandIn:
    def __init__(self, multi_user: bool = True) -> None:
        self.multi_user = multi_user
        self.requests: list[Request] = []
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.run_script: list[tuple[str, dict[str, str]]] = [("SUCCEEDED", {})]
        self._played: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KfpStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method: str, path_end: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path_end)]

    # ------------------------------------------------------------------------------ behaviour
    @staticmethod
    def _matches(obj: dict[str, Any], query: dict[str, str]) -> bool:
        if "namespace" in query and obj.get("namespace", "") != query["namespace"]:
            return False
        if not query.get("filter"):
            return True
        for p in json.loads(query["filter"]).get("predicates", []):
            value = p.get("stringValue", p.get("string_value"))
            if p.get("operation") not in (1, "EQUALS") or obj.get(p["key"]) != value:
                return False
        return True

    def _new_version(self, pipeline_id: str, name: str, spec: Any) -> dict[str, Any]:
        vid = str(uuid.uuid4())
        v = {"pipeline_id": pipeline_id, "pipeline_version_id": vid, "display_name": name, "name": name,
             "pipeline_spec": spec}
        self.versions[vid] = v
        return v

    def _respond(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if not path.startswith(API):
            return 404, {"error": f"no route {path}", "code": 5}
        route = path[len(API):]
        with self._lock:
            if method == "GET" and route == "/healthz":
                return 200, {"multi_user": self.multi_user}
            if method == "GET" and route == "/pipelines":
                found = [p for p in self.pipelines.values() if self._matches(p, query)]
                return 200, {"pipelines": found, "total_size": len(found)} if found else {}
            if method == "POST" and route in ("/pipelines/upload", "/pipelines/upload_version"):
                found = problems(body["uploadfile"])
                if found:  # what the API server answers a spec it cannot read
                    return 400, {"error": "invalid pipeline spec: " + "; ".join(found), "code": 3}
            if method == "POST" and route == "/pipelines/upload":
                name = query.get("name") or query.get("display_name")
                if any(p["display_name"] == name and p["namespace"] == query.get("namespace", "")
                       for p in self.pipelines.values()):
                    return 409, {"error": f"pipeline {name} already exists", "code": 6}
                pid = str(uuid.uuid4())
                p = {"pipeline_id": pid, "display_name": name, "name": name, "namespace": query.get("namespace", ""),
                     "description": query.get("description", "")}
                self.pipelines[pid] = p
                self._new_version(pid, name, body["uploadfile"])  # KFP's first version, named as the pipeline
                return 200, p
            if method == "POST" and route == "/pipelines/upload_version":
                pid = query.get("pipelineid", "")
                if pid not in self.pipelines:
                    return 404, {"error": f"no pipeline {pid}", "code": 5}
                name = query.get("name") or query.get("display_name")
                if any(v["pipeline_id"] == pid and v["display_name"] == name for v in self.versions.values()):
                    return 409, {"error": f"version {name} already exists", "code": 6}
                return 200, self._new_version(pid, name, body["uploadfile"])
            if method == "GET" and route.startswith("/pipelines/") and route.endswith("/versions"):
                pid = route.split("/")[2]
                found = [v for v in self.versions.values() if v["pipeline_id"] == pid and self._matches(v, query)]
                return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
            if method == "GET" and route == "/experiments":
                found = [e for e in self.experiments.values() if self._matches(e, query)]
                return 200, {"experiments": found, "total_size": len(found)} if found else {}
            if method == "POST" and route == "/experiments":
                eid = str(uuid.uuid4())
                e = {**body, "experiment_id": eid, "namespace": body.get("namespace", "")}
                self.experiments[eid] = e
                return 200, e
            if method == "POST" and route == "/runs":
                if body.get("experiment_id") not in self.experiments:
                    return 400, {"error": "unknown experiment", "code": 3}
                inline = body.get("pipeline_spec")
                if inline is not None:
                    docs = [inline.get("pipeline_spec")]
                    docs += [inline["platform_spec"]] if "platform_spec" in inline else []
                    found = problems(docs)
                    if found:
                        return 400, {"error": "invalid pipeline spec: " + "; ".join(found), "code": 3}
                rid = str(uuid.uuid4())
                self.runs[rid] = {**body, "run_id": rid, "state": "PENDING"}
                self._played[rid] = 0
                return 200, self.runs[rid]
            if method == "GET" and route.startswith("/runs/"):
                rid = route.split("/")[2]
                if rid not in self.runs:
                    return 404, {"error": f"no run {rid}", "code": 5}
                i = min(self._played[rid], len(self.run_script) - 1)
                self._played[rid] += 1
                state, tasks = self.run_script[i]
                run = {**self.runs[rid], "state": state,
                       "run_details": {"task_details": [{"task_id": f"t-{n}", "display_name": n, "state": s}
                                                        for n, s in tasks.items()]}}
                if state == "FAILED":
                    run["error"] = {"code": 2, "message": "task failed"}
                return 200, run
            if method == "POST" and route == "/recurringruns":
                rrid = str(uuid.uuid4())
                self.recurring_runs[rrid] = {**body, "recurring_run_id": rrid, "status": "ENABLED"}
                return 200, self.recurring_runs[rrid]
        return 404, {"error": f"no route {method} {path}", "code": 5}

    # ------------------------------------------------------------------------------ HTTP
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                ctype = self.headers.get("Content-Type", "")
                body: Any = None
                if raw and ctype.startswith("multipart/form-data"):
                    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
                    body = {}
                    for part in msg.iter_parts():
                        payload = part.get_payload(decode=True)
                        name = part.get_param("name", header="content-disposition")
                        body[name] = list(yaml.safe_load_all(payload)) if part.get_filename() else payload.decode()
                elif raw:
                    body = json.loads(raw)
                headers = {k.lower(): v for k, v in self.headers.items()}
                standin.requests.append(Request(method, url.path, query, headers, body, raw))
                status, out = standin._respond(method, url.path, query, body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

        return Handler
