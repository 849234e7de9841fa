"""The training hand-off (reset/launch): job manifests validated offline, and create / watch /
failure / timeout against a local stand-in of the Kubernetes API, through the official client."""

from __future__ import annotations

import pytest

from reset.config.cluster import ClusterConfig, TrainingEngine
from reset.launch import JobFailed, JobTimeout, TrainingLaunch, job_manifest, run_job
from reset.launch.manifests import job_name

from .conftest import wait_for
from .k8s_schemas import validate
from .k8s_standin import K8sStandIn


def _launch(**kw) -> TrainingLaunch:
    cluster = ClusterConfig(resources={"finetune-mtl": {"gpus": 8, "gpu_type": "NVIDIA-H100-80GB-HBM3"}})
    base = dict(
        name=job_name("a1b2c3d4-run", "finetune-mtl"), namespace="team-ml", image="registry.example/reset:1.0-cuda",
        trainer_args=["--job", "/mnt/reset/runs/a1b2/finetune-mtl/job.json"], claim="reset-run-a1b2",
        mount_path="/mnt/reset", resources=cluster.step_resources("finetune-mtl"),
        env={"RESET_CACHE_DIR": "/mnt/reset/cache", "HF_HUB_OFFLINE": "1"},
        secret_env={"AWS_ACCESS_KEY_ID": ("reset-s3", "AWS_ACCESS_KEY_ID", False),
                    "MLFLOW_TRACKING_TOKEN": ("reset-mlflow", "MLFLOW_TRACKING_TOKEN", True)},
        labels={"reset.kfp/run-id": "a1b2c3d4"},
    )
    base.update(kw)
    return TrainingLaunch(**base)


@pytest.mark.parametrize("engine", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("nodes", [1, 4])
def test_job_manifests_validate_against_the_crd_and_core_schemas(engine, nodes):
    eng = TrainingEngine(engine=engine, nodes=nodes, procs_per_node=8, service_account="reset-trainer")
    m = job_manifest(_launch(), eng)
    assert validate(m) == "crd"
    text = str(m)
    # torchrun over our image running the library's trainer; the run's PVC on every pod
    assert "torchrun" in text and "--nproc-per-node=8" in text and "reset.models.finetune" in text
    assert "reset-run-a1b2" in text and "NVIDIA-H100-80GB-HBM3" in text
    if engine == "pytorchjob":
        reps = m["spec"]["pytorchReplicaSpecs"]
        assert reps["Master"]["replicas"] == 1 and reps.get("Worker", {}).get("replicas", 0) == nodes - 1
        res = reps["Master"]["template"]["spec"]["containers"][0]["resources"]
    else:
        assert m["spec"]["trainer"]["numNodes"] == nodes
        res = m["spec"]["trainer"]["resourcesPerNode"]
    assert res["limits"]["nvidia.com/gpu"] == "8"
    # secrets by reference only: a required one for S3, an optional one for MLflow
    envs = {e["name"]: e for e in (m["spec"]["trainer"]["env"] if engine == "trainjob" else
                                   m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"])}
    assert envs["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "reset-s3", "key": "AWS_ACCESS_KEY_ID",
                                                                      "optional": False}
    assert envs["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_a_misspelt_field_fails_validation():
    import jsonschema

    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob"))
    m["spec"]["runPolicy"]["activeDeadlineSecond"] = 10
    with pytest.raises(jsonschema.ValidationError, match="activeDeadlineSecond"):
        validate(m)
    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob"))
    m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(Exception, match="resource"):
        validate(m)


def test_job_names_are_valid_labels():
    assert job_name("0c1f-4E2A_x" * 10, "finetune-mtl").startswith("j-0c1f-4e2a-x")
    assert len(job_name("a" * 100)) <= 63
    assert job_name("Run 7", "finetune-reset") == "run-7-finetune-reset"


def _cond(kind: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def test_pytorchjob_created_watched_and_succeeds():
    lines: list[str] = []
    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob", nodes=2))
    with K8sStandIn() as k8s:
        k8s.script = [(0.05, {"conditions": [_cond("Created", "PyTorchJobCreated", "created")]}),
                      (0.05, {"conditions": [_cond("Running", "PyTorchJobRunning", "running")]}),
                      (0.05, {"conditions": [_cond("Succeeded", "PyTorchJobSucceeded", "done")]})]
        result = run_job(k8s.api_client(), m, timeout_s=30, log=lines.append)
        posts = [r for r in k8s.requests if r[0] == "POST"]
        watches = [r for r in k8s.requests if r[0] == "GET" and r[2].get("watch") in ("true", "True")]
    assert [c[0] for c in result.conditions] == ["Created", "Running", "Succeeded"]
    assert posts == [("POST", "/apis/kubeflow.org/v1/namespaces/team-ml/pytorchjobs", {}, m)]
    assert watches and watches[0][2]["fieldSelector"] == f"metadata.name={m['metadata']['name']}"
    assert any("Running (PyTorchJobRunning: running)" in ln for ln in lines)  # status streamed


def test_trainjob_failure_carries_the_jobs_own_reason():
    m = job_manifest(_launch(), TrainingEngine(engine="trainjob"))
    with K8sStandIn() as k8s:
        k8s.script = [
            (0.05, {"conditions": [_cond("Created", "JobsCreationSucceeded", "jobs created")]}),
            (0.05, {"conditions": [_cond("Failed", "TrainingFailed", "node-0-0 exited with code 137 (OOMKilled)")]}),
        ]
        with pytest.raises(JobFailed) as err:
            run_job(k8s.api_client(), m, timeout_s=30, log=lambda _: None)
        assert ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-ml/trainjobs", {}, m) in k8s.requests
    assert err.value.reason == "TrainingFailed"
    assert "OOMKilled" in str(err.value) and m["metadata"]["name"] in str(err.value)


def test_timeout_deletes_the_job_and_fails():
    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob"))
    with K8sStandIn() as k8s:
        k8s.script = [(0.05, {"conditions": [_cond("Running", "PyTorchJobRunning", "running")]})]
        with pytest.raises(JobTimeout, match="did not finish within 2s"):
            run_job(k8s.api_client(), m, timeout_s=2, log=lambda _: None, watch_s=1)
        deletes = [r for r in k8s.requests if r[0] == "DELETE"]
        assert k8s.objects == {}
    assert deletes and deletes[0][1].endswith(f"/pytorchjobs/{m['metadata']['name']}")
    assert deletes[0][2]["propagationPolicy"] == "Foreground"  # pods go with the job


def test_an_expired_watch_is_resumed_from_a_fresh_read():
    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob"))
    with K8sStandIn() as k8s:
        k8s.expire_next_watch = True
        k8s.script = [(0.3, {"conditions": [_cond("Succeeded", "PyTorchJobSucceeded", "done")]})]
        result = run_job(k8s.api_client(), m, timeout_s=30, log=lambda _: None)
        gets = [r for r in k8s.requests if r[0] == "GET" and r[1].endswith(m["metadata"]["name"])]
    assert result.conditions[-1][0] == "Succeeded"
    assert gets  # re-read the job after the 410


def test_a_job_deleted_by_someone_else_fails_the_step():
    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob"))
    with K8sStandIn() as k8s:
        k8s.script = [(0.05, {"conditions": [_cond("Running")]})]

        def delete_while_watched():
            from kubernetes import client

            # once the step watches its job (and has seen it Running), someone else deletes it
            wait_for("the step to watch its running job",
                     lambda: any(e[1] == "MODIFIED" for e in k8s.events)
                     and any(r[0] == "GET" and r[2].get("watch") in ("true", "True", "1") for r in k8s.requests),
                     60, 0.02)
            client.CustomObjectsApi(k8s.api_client()).delete_namespaced_custom_object(
                "kubeflow.org", "v1", "team-ml", "pytorchjobs", m["metadata"]["name"]
            )

        import threading

        t = threading.Thread(target=delete_while_watched)
        t.start()
        with pytest.raises(JobFailed, match="deleted before it finished"):
            run_job(k8s.api_client(), m, timeout_s=30, log=lambda _: None)
        t.join()


def test_a_name_clash_is_reported_with_the_servers_answer():
    m = job_manifest(_launch(), TrainingEngine(engine="pytorchjob"))
    with K8sStandIn() as k8s:
        k8s.script = [(0.01, {"conditions": [_cond("Succeeded")]})]
        run_job(k8s.api_client(), m, timeout_s=30, log=lambda _: None)
        from reset.launch import LaunchError

        with pytest.raises(LaunchError, match="HTTP 409.*already exists"):
            run_job(k8s.api_client(), m, timeout_s=30, log=lambda _: None)
