"""Create a training job, follow it to the end, and report how it ended.

`run_job` creates the job (a custom resource), watches it by name with the `kubernetes` client's
watch (resuming from the last resourceVersion when a watch ends, re-listing on 410 Gone), prints
each condition the job reaches once, and returns when it succeeds. It raises JobFailed with the
job's own reason and message when the job fails (or is deleted), and JobTimeout after deleting it
when the deadline passes first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# kind -> (group, version, plural, condition types that end the job well, and badly)
JOB_KINDS: dict[str, tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = {
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs", ("Succeeded",), ("Failed",)),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", ("Complete",), ("Failed",)),
}
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class LaunchError(RuntimeError):
    """The job could not be created or followed (the message says which and why)."""


class JobFailed(LaunchError):
    """The training job failed; `reason` and `message` are the job's own."""

    def __init__(self, kind: str, name: str, reason: str, message: str):
        super().__init__(f"{kind} {name} failed: {reason}: {message}")
        self.reason, self.message = reason, message


class JobTimeout(LaunchError):
    """The training job did not finish in time (it was deleted)."""


@dataclass
class JobResult:
    kind: str
    name: str
    namespace: str
    seconds: float
    conditions: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) of each condition reached, in order."""


def api_client():
    """A kubernetes ApiClient: the pod's service account in a cluster, else the kubeconfig."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return client.ApiClient()


def current_namespace() -> str:
    """The namespace this pod runs in (where the training job is created)."""
    if ns := os.environ.get("RESET_NAMESPACE", "").strip():
        return ns
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        raise LaunchError(f"cannot tell the namespace: set RESET_NAMESPACE (no {_SA_NAMESPACE})") from None


def _conditions(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (obj.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]


def run_job(api, manifest: Mapping[str, Any], timeout_s: float, log: Callable[[str], None] = print,
            watch_s: int = 60) -> JobResult:
    """Create `manifest` with `api` (a kubernetes ApiClient) and wait for it; see the module doc."""
    from kubernetes import client, watch
    from kubernetes.client.exceptions import ApiException

    kind = manifest["kind"]
    group, version, plural, good, bad = JOB_KINDS[kind]
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    custom = client.CustomObjectsApi(api)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    try:
        created = custom.create_namespaced_custom_object(group, version, ns, plural, dict(manifest))
    except ApiException as exc:
        raise LaunchError(f"cannot create {kind} {ns}/{name}: HTTP {exc.status} {exc.reason}: "
                         f"{(exc.body or '')[:500]}") from None
    log(f"[train] created {kind} {ns}/{name} (timeout {timeout_s:.0f}s)")
    result = JobResult(kind, name, ns, 0.0)
    seen: set[tuple[str, str, str]] = set()
    rv = (created.get("metadata") or {}).get("resourceVersion")

    def observe(obj: Mapping[str, Any]) -> bool:
        """Report new conditions; True when the job ended well; raise when it ended badly."""
        for c in _conditions(obj):
            key = (str(c.get("type", "")), str(c.get("reason", "")), str(c.get("message", "")))
            if key not in seen:
                seen.add(key)
                result.conditions.append(key)
                log(f"[train] {kind} {name}: {key[0]}" + (f" ({key[1]}: {key[2]})" if key[1] or key[2] else ""))
            if key[0] in bad:
                raise JobFailed(kind, name, key[1] or key[0], key[2] or "no message")
            if key[0] in good:
                return True
        return False

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _delete(custom, group, version, ns, plural, name, log)
            raise JobTimeout(f"{kind} {ns}/{name} did not finish within {timeout_s:.0f}s; deleted it")
        w = watch.Watch()
        try:
            for event in w.stream(custom.list_namespaced_custom_object, group, version, ns, plural,
                                  field_selector=f"metadata.name={name}", resource_version=rv,
                                  timeout_seconds=max(1, int(min(remaining, watch_s))),
                                  _request_timeout=(10, min(remaining, watch_s) + 10)):
                obj = event["object"]
                if event["type"] == "DELETED":
                    raise JobFailed(kind, name, "Deleted", "the job was deleted before it finished")
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if observe(obj):
                    result.seconds = time.monotonic() - t0
                    return result
                if time.monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: our resourceVersion is too old; read the job afresh
                raise LaunchError(f"watching {kind} {ns}/{name}: HTTP {exc.status} {exc.reason}") from None
            rv = None
        finally:
            w.stop()
        if rv is None:  # catch up on what the expired watch may have missed
            obj = custom.get_namespaced_custom_object(group, version, ns, plural, name)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if observe(obj):
                result.seconds = time.monotonic() - t0
                return result


def _delete(custom, group: str, version: str, ns: str, plural: str, name: str, log: Callable[[str], None]) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.delete_namespaced_custom_object(group, version, ns, plural, name, propagation_policy="Foreground")
        log(f"[train] deleted {plural} {ns}/{name}")
    except ApiException as exc:
        if exc.status != 404:
            log(f"[train] could not delete {plural} {ns}/{name}: HTTP {exc.status} {exc.reason}")
