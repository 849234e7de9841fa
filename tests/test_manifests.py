"""manifests/: rendered with `kubectl kustomize`, every object validated offline (core kinds
strictly against the Kubernetes schemas, custom resources against manifests/crds/), checkov with
0 failed checks and a reason for each skip, Secret templates without values, least-privilege RBAC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .k8s_schemas import validate

OVERLAYS = ["manifests/base", "manifests/overlays/external-s3", "manifests/serving"]
CHECKOV = REPO / ".venv-tools" / "bin" / "checkov"


def _render(path: str | Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render kustomize (make test installs it)"
    out = subprocess.run([kubectl, "kustomize", str(REPO / path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(docs: list[dict], kind: str, name: str = "") -> dict:
    return next(d for d in docs if d["kind"] == kind and (not name or d["metadata"]["name"] == name))


def predictor_deployment(isvc: dict, runtime: dict) -> dict:
    """The predictor pod KServe builds from an InferenceService and its ServingRuntime (the
    runtime's container with the model's fields over it, the predictor's pod fields, the runtime's
    volumes, KServe's pod label), as a Deployment: checkov checks workloads, not custom resources."""
    predictor = dict(isvc["spec"]["predictor"])
    model = predictor.pop("model")
    container = json.loads(json.dumps(runtime["spec"]["containers"][0]))
    for key in ("resources", "env", "args"):
        if key in model:
            container[key] = model[key] if key != "args" else container.get("args", []) + model[key]
    pod = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric")}
    pod.update(containers=[container], volumes=runtime["spec"].get("volumes", []))
    labels = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{isvc['metadata']['name']}-predictor", "namespace": isvc["metadata"]["namespace"]},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod}}}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {p: _render(p) for p in OVERLAYS}


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_rendered_object_validates(rendered, path):
    docs = rendered[path]
    assert docs
    for d in docs:
        validate(d)
        assert d["metadata"].get("namespace") or d["kind"] in ("Namespace",), d["metadata"]["name"]


def test_external_s3_drops_minio_and_keeps_mlflow(rendered):
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered["manifests/overlays/external-s3"]}
    assert ("Deployment", "mlflow") in names and ("StatefulSet", "mlflow-postgres") in names
    assert not any("minio" in n for _, n in names)


def test_mlflow_uses_postgres_s3_and_allowed_hosts(rendered):
    dep = next(d for d in rendered["manifests/base"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    spec = dep["spec"]["template"]["spec"]
    args = spec["containers"][0]["command"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg2://mlflow:$(MLFLOW_DB_PASSWORD)@")
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert any(a.startswith("--allowed-hosts=") for a in args)
    assert spec["initContainers"][0]["command"][:3] == ["mlflow", "db", "upgrade"]
    assert "@sha256:" in spec["containers"][0]["image"]


def test_rbac_is_least_privilege(rendered):
    roles = [d for d in rendered["manifests/base"] if d["kind"] in ("Role", "ClusterRole")]
    assert [r["kind"] for r in roles] == ["Role"]  # nothing cluster-wide
    rules = roles[0]["rules"]
    assert {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]} == {
        ("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")}
    for rule in rules:
        assert "*" not in rule["verbs"] and set(rule["verbs"]) <= {"create", "get", "list", "watch", "delete"}


def test_secret_templates_hold_no_values():
    for path in sorted((REPO / "manifests" / "secrets").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        validate({**doc, "metadata": {**doc["metadata"], "namespace": "x"}})
        assert doc["kind"] == "Secret" and "data" not in doc
        assert all(v == "" for v in doc["stringData"].values()), path.name


@pytest.mark.parametrize("path", OVERLAYS)
def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason(rendered, path, tmp_path):
    assert CHECKOV.exists(), f"no {CHECKOV}: run `make tools` (make test does)"
    docs = rendered[path]
    if path == "manifests/serving":  # the predictor as the pod KServe runs
        isvc, runtime = _one(docs, "InferenceService"), _one(docs, "ServingRuntime")
        docs = [d for d in docs if d["kind"] not in ("InferenceService", "ServingRuntime")]
        docs.append(predictor_deployment(isvc, runtime))
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_UPDATE": "1"}
    out = subprocess.run([str(CHECKOV), "-f", str(f), "--framework", "kubernetes", "--skip-download", "-o", "json",
                          "--quiet"], capture_output=True, text=True, timeout=600, env=env)
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > (60 if path == "manifests/serving" else 100)
    for c in report["results"].get("skipped_checks", []):
        assert len(c.get("check_result", {}).get("suppress_comment", "")) > 20, c["check_id"]


# ------------------------------------------------------------------------------------------ serving
def test_the_inference_service_serves_the_registrys_champion_with_vllm(tmp_path, tiny_model_dir, s3, monkeypatch):
    """`champion --env-file` writes the champion's exported weights location from a real registry
    (SQLite store, weights on S3); the rendered InferenceService serves exactly that, through the
    vLLM runtime of our CUDA image."""
    import mlflow

    from pipelines.cli import main
    from reset import registry
    from reset.config import RegisterConfig

    serving = tmp_path / "serving"
    shutil.copytree(REPO / "manifests" / "serving", serving)
    s3.create_bucket(Bucket="serve-exports")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("serve", artifact_location=(tmp_path / "art").as_uri())
        cfg = RegisterConfig(model_name="serve", export_uri="s3://serve-exports/m")
        client = mlflow.MlflowClient()
        with mlflow.start_run(experiment_id=exp) as run:
            exported = registry.export_model(tiny_model_dir, cfg, run_id=run.info.run_id)
            version = registry.register_version(client, "serve", exported, run.info.run_id)
        registry.move_champion(client, cfg, version, expected=None, holder="test", reason="first", log=lambda _: None)
    finally:
        mlflow.set_tracking_uri(None)
    rc = main(["champion", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"tracking.tracking_uri={uri}",
               "--set", "tracking.experiment=serve", "--set", "register.model_name=serve",
               "--env-file", str(serving / "champion.env")])
    assert rc == 0
    docs = _render(serving)
    isvc, runtime = _one(docs, "InferenceService"), _one(docs, "ServingRuntime")
    for d in docs:
        validate(d)
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == exported.weights_uri == f"s3://serve-exports/m/serve/{run.info.run_id}/artifacts/" \
        + tiny_model_dir.name
    assert any(o["Key"].endswith("/model.safetensors") for o in s3.list_objects_v2(
        Bucket="serve-exports", Prefix=model["storageUri"].split("/", 3)[3]).get("Contents", []))
    assert isvc["metadata"]["annotations"] == {"reset.kfp/registered-model": "serve",
                                               "reset.kfp/model-version": version}
    # the runtime: vLLM's OpenAI server from our image, on what the storage initializer downloads
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    c = runtime["spec"]["containers"][0]
    assert c["command"][:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--model=/mnt/models" in c["args"] and "@sha256:" in c["image"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # S3 keys come from the Secret the ServiceAccount lists; its template carries KServe's annotations
    sa = _one(docs, "ServiceAccount", isvc["spec"]["predictor"]["serviceAccountName"])
    secret = yaml.safe_load((REPO / "manifests" / "secrets" / "reset-s3.template.yaml").read_text())
    assert [s["name"] for s in sa["secrets"]] == [secret["metadata"]["name"]]
    assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"} <= set(secret["metadata"]["annotations"])
    # the NetworkPolicy selects the pods KServe labels for this InferenceService
    pol = _one(docs, "NetworkPolicy", "reset-champion")
    labels = predictor_deployment(isvc, runtime)["spec"]["template"]["metadata"]["labels"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_the_committed_champion_env_is_a_placeholder_that_says_how_to_write_it():
    text = (REPO / "manifests" / "serving" / "champion.env").read_text()
    assert "python -m pipelines champion" in text and "RUN_ID" in text


def test_the_paper_config_reaches_mlflow_by_a_name_the_server_allows():
    """configs/paper-7b.yaml's tracking_uri: the Service of manifests/base in its namespace, and a
    Host header MLflow's --allowed-hosts accepts (tests/test_mlflow_postgres.py checks the refusal)."""
    from urllib.parse import urlsplit

    from reset.config import load_config

    cfg = load_config(REPO / "configs" / "paper-7b.yaml")
    docs = _render("manifests/base")
    dep = _one(docs, "Deployment", "mlflow")
    allowed = (
        next(a for a in dep["spec"]["template"]["spec"]["containers"][0]["command"] if a.startswith("--allowed-hosts="))
        .split("=", 1)[1]
        .split(",")
    )
    assert urlsplit(cfg.tracking.tracking_uri).netloc in allowed
    assert urlsplit(cfg.tracking.tracking_uri).hostname == f"mlflow.{dep['metadata']['namespace']}.svc.cluster.local"
