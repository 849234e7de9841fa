"""A compiled pipeline read strictly against KFP's own protobuf message types, as a KFP backend
reads it: the pipeline spec as `PipelineSpec`, the platform document as `PlatformSpec`, and every
Kubernetes executor config in it (a free-form `google.protobuf.Struct` to the spec and to kfp's
loader) as kfp-kubernetes' `KubernetesExecutorConfig`. An unknown field or a value of the wrong type
is an error (protobuf's JSON parser with ignore_unknown_fields=False); so is a platform config for an
executor the spec does not have, a parsed document that does not print back as it was written, and
a volume, Secret or ConfigMap reference without its name.

    problems(docs) -> ["<where>: <what>", ...]   ([] when KFP's schemas accept every part)
"""

from __future__ import annotations

from typing import Any


def _parse(doc: Any, message, where: str) -> tuple[Any, list[str]]:
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(doc, message, ignore_unknown_fields=False), []
    except json_format.ParseError as exc:
        return None, [f"{where}: {exc}"]


def _round_trip(doc: dict, msg, where: str) -> list[str]:
    """The parsed message, printed back, is the document: no field was dropped or reinterpreted."""
    from google.protobuf import json_format

    back = json_format.MessageToDict(msg, preserving_proto_field_name=False)
    return [] if _same(back, doc) else [f"{where}: does not print back as written (a field is not what KFP reads)"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        # proto3 JSON leaves out fields at their default value ("", 0, false, [], {})
        keys = {k for k in a.keys() | b.keys() if not (_empty(a.get(k)) and _empty(b.get(k)))}
        return all(_same(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, int | float) and not isinstance(b, bool):
        return a == str(b)  # int64 fields print as strings
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return a == b


def _empty(v: Any) -> bool:
    return v is None or v in ("", 0, False) or v == [] or v == {}


def _references(name: str, cfg) -> list[str]:
    """What the schema leaves optional but a pod cannot start without."""
    out = []
    for m in cfg.pvc_mount:
        if not m.mount_path:
            out.append(f"{name}: a PVC mount without mountPath")
        if not (m.constant or m.component_input_parameter or m.task_output_parameter.producer_task
                or m.HasField("pvc_name_parameter")):
            out.append(f"{name}: a PVC mount at {m.mount_path} names no claim")
    for s in list(cfg.secret_as_volume) + list(cfg.secret_as_env):
        if not (s.secret_name or s.HasField("secret_name_parameter")):
            out.append(f"{name}: a Secret reference without a name")
    for s in cfg.secret_as_env:
        if any(not kv.secret_key or not kv.env_var for kv in s.key_to_env):
            out.append(f"{name}: a Secret env var without its key or variable name")
    for c in list(cfg.config_map_as_volume) + list(cfg.config_map_as_env):
        if not (c.config_map_name or c.HasField("config_map_name_parameter")):
            out.append(f"{name}: a ConfigMap reference without a name")
    return out


def problems(docs: list[dict]) -> list[str]:
    """Every way the compiled documents (the pipeline spec, then the platform document if any)
    differ from what KFP's and kfp-kubernetes' message types accept."""
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not docs or len(docs) > 2:
        return [f"{len(docs)} YAML documents: a compiled pipeline is a spec and at most a platform document"]
    spec, out = _parse(docs[0], pipeline_spec_pb2.PipelineSpec(), "pipeline spec")
    if spec is None:
        return out
    out += _round_trip(docs[0], spec, "pipeline spec")
    if len(docs) == 1:
        return out
    platform, errors = _parse(docs[1], pipeline_spec_pb2.PlatformSpec(), "platform spec")
    if platform is None:
        return out + errors
    if set(platform.platforms) != {"kubernetes"}:
        out.append(f"platform spec: platforms {sorted(platform.platforms)} (only kubernetes is applied)")
    executors = docs[1].get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    known = set(spec.deployment_spec["executors"]) if "executors" in spec.deployment_spec else set()
    for name, raw in executors.items():
        where = f"kubernetes executor {name}"
        if name not in known:
            out.append(f"{where}: no such executor in the pipeline spec")
        cfg, errors = _parse(raw, k8s_pb2.KubernetesExecutorConfig(), where)
        if cfg is None:
            out += errors
            continue
        out += _round_trip(raw, cfg, where) + _references(where, cfg)
    return out
