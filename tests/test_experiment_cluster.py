"""The paper's experiment on a Kubeflow cluster: `compile` of configs/experiment.yaml writes the
experiment's DAG (not the ReSet pipeline's) with the cluster settings the ReSet pipeline gets;
configs/experiment-7b.yaml (the paper's scale) puts the run's volume on every model step, GPUs where
the resources say, the fine-tuning on the training engine and no weights in KFP artifacts; `submit`
sends it through the real kfp.Client (tests/kfp_standin.py) with the run form's seeds."""

from __future__ import annotations

import json

import pytest
import yaml

from pipelines.cli import main

from .conftest import REPO
from .kfp_standin import KfpStandIn

ARMS = ("if-only", "cd-only", "cd-if", "if-cd", "mtl", "reset", "reset-s", "control")
TOKEN = "kfp-token-5ecret-exp-0123"
SERVER = "http://mlflow.team-ml.svc.cluster.local:5000"


def _docs(path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def _loop_tasks(spec: dict) -> dict[str, dict]:
    """The tasks of both loops (the seeds' and the trade-off arms') by display name."""
    loops = [c for name, c in spec["components"].items() if name.startswith("comp-for-loop") and "dag" in c]
    return {t["taskInfo"]["name"]: t for loop in loops for t in loop["dag"]["tasks"].values()}


def _loop_keys(spec: dict) -> dict[str, str]:
    loops = [c for name, c in spec["components"].items() if name.startswith("comp-for-loop") and "dag" in c]
    return {t["taskInfo"]["name"]: k for loop in loops for k, t in loop["dag"]["tasks"].items()}


def _exec(spec: dict, task: dict) -> str:
    return task["componentRef"]["name"].replace("comp-", "exec-")


def test_compile_writes_the_experiment_with_the_cluster_settings(tmp_path, capsys):
    out = tmp_path / "exp.yaml"
    assert main(["compile", "--config", str(REPO / "configs" / "experiment.yaml"), "--output", str(out)]) == 0
    assert "compiled the reset-experiment pipeline" in capsys.readouterr().out
    spec, platform = _docs(out)
    assert spec["pipelineInfo"]["name"] == "reset-experiment"
    tasks = _loop_tasks(spec)
    key = _loop_keys(spec)
    assert {f"finetune-{a}" for a in ARMS} <= set(tasks)
    # dependency order: the sequential arms after their first half, the continued ones after MTL
    assert key["finetune-cd-only"] in tasks["finetune-cd-if"]["dependentTasks"]
    assert key["finetune-if-only"] in tasks["finetune-if-cd"]["dependentTasks"]
    for arm in ("reset", "reset-s", "control"):
        assert key["finetune-mtl"] in tasks[f"finetune-{arm}"]["dependentTasks"], arm
    # the cluster settings of the ReSet pipeline: the image, the run id, Secrets, the run's volume
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in (f"finetune-{a}" for a in ARMS):
        ex = _exec(spec, tasks[name])
        assert executors[ex]["container"]["image"] == "ghcr.io/reset-kfp/reset:0.1.0", name
        assert [m["mountPath"] for m in k8s[ex]["pvcMount"]] == ["/mnt/reset"], name
        assert any(f["name"] == "RESET_KFP_RUN_ID" for f in k8s[ex]["fieldPathAsEnv"]), name
        assert {s["secretName"] for s in k8s[ex]["secretAsEnv"]} >= {"reset-s3", "reset-mlflow"}, name
    assert "createpvc" in spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    # the run form: tracking and the seeds (the arms shape the DAG: compile-time)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"tracking", "seeds", "tradeoff_seeds"} and params["seeds"]["defaultValue"] == [0, 1, 2, 3, 4]
    assert params["tradeoff_seeds"]["defaultValue"] == [0]  # experiment.tradeoff_seed_count: 1


def test_the_paper_scale_experiment_keeps_weights_on_the_volume_and_gpus_where_configured(tmp_path):
    out = tmp_path / "exp7b.yaml"
    assert main(["compile", "--config", str(REPO / "configs" / "experiment-7b.yaml"), "--output", str(out)]) == 0
    spec, platform = _docs(out)
    tasks = _loop_tasks(spec)
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, task in tasks.items():
        ex = _exec(spec, task)
        env = {e["name"]: e.get("value") for e in executors[ex]["container"].get("env", [])}
        if name.startswith("finetune-"):  # a launcher pod; the PyTorchJob's pods get the GPUs
            launch = json.loads(env["RESET_TRAINING"])
            assert launch["engine"] == "pytorchjob" and launch["resources"]["gpus"] == 8, name
            assert "accelerator" not in executors[ex]["container"]["resources"], name
        if name.startswith(("finetune-", "generate-", "judge-", "evaluate")):
            assert env["RESET_CACHE_DIR"] == "/mnt/reset/cache", name  # the base model cached on the volume
            assert [m["mountPath"] for m in k8s[ex]["pvcMount"]] == ["/mnt/reset"], name
        if name.startswith(("generate-", "evaluate")):
            assert executors[ex]["container"]["resources"]["accelerator"]["resourceCount"] == "1", name
    # seeds at once as configured; no weights as artifacts: the fine-tuning outputs are LoRA adapters
    root = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = next(t for t in root.values() if "parameterIterator" in t)
    assert loop["iteratorPolicy"] == {"parallelismLimit": 5}
    outputs = [c.get("outputDefinitions", {}).get("artifacts", {}) for c in spec["components"].values()]
    models = {a for arts in outputs for a, d in arts.items() if d["artifactType"]["schemaTitle"] == "system.Model"}
    assert models == {"checkpoint"}


@pytest.fixture()
def api(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with KfpStandIn() as standin:
        yield standin


def test_submit_sends_the_experiment_with_the_run_forms_seeds(api, capsys):
    cfg = ["--config", str(REPO / "configs" / "experiment.yaml"), "--set", f"tracking.tracking_uri={SERVER}"]
    api.run_script = [("RUNNING", {"finetune-mtl": "RUNNING"}), ("SUCCEEDED", {"report": "SUCCEEDED"})]
    rc = main(["submit", *cfg, "--set", "experiment.seeds=[7, 8]", "--host", api.url, "--namespace", "team-ml",
               "--experiment", "paper", "--wait", "--poll", "0.01"])
    assert rc == 0, capsys.readouterr().err
    run = api.calls("POST", "/runs")[0].body
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "reset-experiment"
    assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]
    # the parameters, written out from the config file (not from the code that builds them)
    tracking = yaml.safe_load((REPO / "configs" / "experiment.yaml").read_text())["tracking"]
    assert run["runtime_config"]["parameters"] == {
        "seeds": [7, 8], "tradeoff_seeds": [7], "tracking": {"run_name": "", **tracking, "tracking_uri": SERVER}}
    assert "report: SUCCEEDED" in capsys.readouterr().out
    for r in api.requests:
        assert r.headers.get("authorization") == f"Bearer {TOKEN}" and TOKEN.encode() not in r.raw
    # `--pipeline reset` sends the ReSet pipeline from the same config
    assert main(["submit", *cfg, "--host", api.url, "--pipeline", "reset"]) == 0
    assert api.calls("POST", "/runs")[1].body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "reset"


def test_submit_refuses_a_local_store_for_the_experiment_too(api, capsys):
    rc = main(["submit", "--config", str(REPO / "configs" / "experiment.yaml"), "--host", api.url])
    assert rc == 2 and "tracking.tracking_uri" in capsys.readouterr().err and not api.requests
