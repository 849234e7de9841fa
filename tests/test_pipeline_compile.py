"""The compiled pipeline: one task per step in the method's order, parameters from the config,
Kubernetes settings in the platform document, no secrets, readable by kfp's own loader."""

from __future__ import annotations

import pytest
import yaml

from pipelines import definitions
from pipelines.cli import main
from pipelines.reset_pipeline import STEP_NAMES, pipeline_arguments
from reset.config import load_config

from .conftest import REPO


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, monkeypatch_module):
    # Credentials live in the environment (locally) or in Kubernetes Secrets (on a cluster); the
    # config names only the variables. Compiling with them set must not leak a value.
    monkeypatch_module.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    monkeypatch_module.setenv("MLFLOW_TRACKING_PASSWORD", "another-secret-456")
    monkeypatch_module.setenv("OPENAI_API_KEY", "sk-very-secret-789")
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "cluster.image=registry.example/reset:1.2.3",
        "judge.judges=[rules, llm-faithfulness, reference]",
        'judge.llm={"base_url": "http://judge.svc:8000/v1", "model": "m", "api_key_env": "OPENAI_API_KEY"}',
    ])
    path = tmp_path_factory.mktemp("compiled") / "reset.yaml"
    definitions.compile_to(cfg, definitions.TRAINING, str(path))
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    return cfg, text, docs


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _topological(dag_tasks: dict) -> list[str]:
    deps = {name: set(t.get("dependentTasks", [])) for name, t in dag_tasks.items()}
    order, done = [], set()
    while deps:
        ready = sorted(n for n, d in deps.items() if d <= done)
        assert ready, f"cycle in {deps}"
        # Exactly one task becomes ready at a time: the DAG is a chain in the method's order.
        assert len(ready) == 1, f"tasks ready together: {ready}"
        order.append(ready[0])
        done.add(ready[0])
        del deps[ready[0]]
    return order


def _by_step(docs) -> dict[str, str]:
    inner = docs[0]["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    return {t["taskInfo"]["name"]: t["componentRef"]["name"].replace("comp-", "exec-") for t in inner.values()}


def test_one_task_per_step_in_method_order(compiled):
    _, _, docs = compiled
    spec = docs[0]
    root_tasks = spec["root"]["dag"]["tasks"]
    assert set(root_tasks) == {"exit-handler-1", "finish-run"}
    assert root_tasks["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    order = _topological(inner)
    names = [inner[n]["taskInfo"]["name"] for n in order]
    # the run's volume is created first and deleted after the last step
    assert names == ["create-volume", "start-run"] + STEP_NAMES + ["delete-volume"]
    assert STEP_NAMES == ["mix", "finetune-mtl", "generate", "judge", "select", "finetune-reset", "evaluate",
                          "register"]


def test_parameters_default_to_the_config(compiled):
    from reset.config.run_parameters import RUN_PARAMETERS, apply_run_parameters

    cfg, _, docs = compiled
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    args = pipeline_arguments(cfg)
    assert set(params) == set(args)
    kinds = {str: "STRING", float: "NUMBER_DOUBLE", int: "NUMBER_INTEGER"}
    for p in RUN_PARAMETERS:  # the run form: typed scalars with defaults and descriptions
        assert params[p.name]["parameterType"] == kinds[p.type], p.name
        assert params[p.name]["description"].startswith(p.description[:30]), p.name
    sections = {k: v for k, v in args.items() if k not in {p.name for p in RUN_PARAMETERS}}
    for name, value in sections.items():
        assert params[name]["parameterType"] == "STRUCT"
        assert params[name]["defaultValue"] == value
        assert params[name]["description"]
    assert "cluster" not in params
    # the defaults put back together are the config, whole
    defaults = {k: v.get("defaultValue") for k, v in params.items()}
    merged = apply_run_parameters({k: defaults[k] for k in sections}, defaults)
    assert merged["train"]["epochs"] == cfg.train.epochs and merged["model"]["base"] == cfg.model.base
    from reset.config import DataSource

    assert [DataSource.model_validate(x) for x in merged["data"]["instruction"]] == cfg.data.instruction


def test_kubernetes_settings_are_in_the_platform_document(compiled):
    cfg, _, docs = compiled
    assert len(docs) == 2
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    spec_exec = docs[0]["deploymentSpec"]["executors"]
    for step, exec_name in _by_step(docs).items():
        if step.endswith("-volume"):
            continue
        k8s = executors[exec_name]
        secrets = {s["secretName"]: s["optional"] for s in k8s["secretAsEnv"]}
        expected = {cfg.cluster.s3_secret: step not in cfg.cluster.s3_steps, cfg.cluster.mlflow_secret: True}
        if step in ("judge", "evaluate"):  # the LLM judge's key, only where a judge runs; required: one is configured
            expected[cfg.cluster.llm_secret] = False
        assert secrets == expected, step
        # the run id from the pod's label: the steps find their MLflow parent run by it
        assert k8s["fieldPathAsEnv"] == [{"name": "RESET_KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}]
        container = spec_exec[exec_name]["container"]
        assert container["image"] == "registry.example/reset:1.2.3"
        gpu = container.get("resources", {}).get("accelerator")
        res = cfg.cluster.step_resources(step)
        if res.gpus:
            assert gpu["resourceCount"] == str(res.gpus) and gpu["resourceType"] == "nvidia.com/gpu"
            assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert gpu is None and "tolerations" not in k8s


def test_no_secret_values_in_the_compiled_yaml(compiled):
    _, text, docs = compiled
    for secret in ("very-secret-value-123", "another-secret-456", "sk-very-secret-789"):
        assert secret not in text
    # what is there: the variable's name in the judge parameter, and the Secret references
    assert docs[0]["root"]["inputDefinitions"]["parameters"]["judge"]["defaultValue"]["llm"]["api_key_env"] == \
        "OPENAI_API_KEY"
    assert "reset-llm" in text and "secretAsEnv" in text


def test_a_key_pasted_into_the_config_is_refused_without_echoing_it(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text('judge:\n  judges: [llm-faithfulness]\n  llm: {base_url: "http://j/v1", model: m, '
                   'api_key_env: "sk-live-0123456789abcdef"}\n')
    assert main(["compile", "--config", str(bad), "--output", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "judge.llm.api_key_env" in err and "sk-live-0123456789abcdef" not in err


def test_submit_refuses_a_local_tracking_store_before_contacting_the_host(tmp_path, capsys):
    rc = main(["submit", "--config", str(REPO / "configs" / "demo.yaml"), "--host", "http://127.0.0.1:9"])
    assert rc == 2
    assert "tracking.tracking_uri" in capsys.readouterr().err
    # compile still works, and says what to override
    assert main(["compile", "--config", str(REPO / "configs" / "demo.yaml"), "--output", str(tmp_path / "p.yaml")]) == 0
    assert "warning: tracking.tracking_uri" in capsys.readouterr().err


def test_kfp_loader_reads_it_back_and_cli_compiles(tmp_path):
    from kfp.components import load_component_from_file

    out = tmp_path / "p.yaml"
    assert main(["compile", "--config", str(REPO / "configs" / "tiny.yaml"), "--output", str(out)]) == 0
    comp = load_component_from_file(str(out))
    assert comp.name == "reset"
    assert set(comp.component_spec.inputs) == set(pipeline_arguments(load_config(REPO / "configs" / "tiny.yaml")))


def test_cli_reports_a_bad_config_by_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: fast\n")
    assert main(["compile", "--config", str(bad), "--output", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate" in err and str(bad) in err
    assert not (tmp_path / "x.yaml").exists()


def test_every_config_section_is_a_pipeline_parameter():
    from reset.config import SECTIONS, PipelineConfig

    names = list(PipelineConfig.model_fields)
    assert set(names) - set(SECTIONS) == {"cluster", "experiment"}  # compile-time settings, not parameters


def test_paper_7b_mounts_the_run_volume_carries_no_weights_and_sizes_each_step(tmp_path):
    """The compiled paper-scale pipeline: the run's PVC on the model steps (the base-model cache
    and checkpoints live there), model artifacts are LoRA adapters only, per-step resources, node
    selectors and timeouts, and the fine-tuning handed to a PyTorchJob."""
    import json

    from reset.config import STEPS

    volume_steps = {name for name, step in STEPS.items() if step.volume}

    cfg = load_config(REPO / "configs" / "paper-7b.yaml")
    out = tmp_path / "p7.yaml"
    definitions.compile_to(cfg, definitions.TRAINING, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    spec_exec = docs[0]["deploymentSpec"]["executors"]
    by_step = _by_step(docs)
    assert "create-volume" in by_step and "delete-volume" in by_step
    inner = docs[0]["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    create = inner["createpvc"]
    assert create["inputs"]["parameters"]["access_modes"]["runtimeValue"]["constant"] == ["ReadWriteMany"]
    assert not create.get("cachingOptions", {}).get("enableCache")  # a cached one would name a deleted PVC
    for step in STEP_NAMES:
        k8s, container = executors[by_step[step]], spec_exec[by_step[step]]["container"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        if step in volume_steps:
            assert [m["mountPath"] for m in k8s["pvcMount"]] == ["/mnt/reset"], step
            assert env["RESET_CACHE_DIR"] == "/mnt/reset/cache", step  # base model cached on the volume
        else:
            assert "pvcMount" not in k8s, step
        assert k8s["emptyDirMounts"][0]["mountPath"] == "/scratch" and env["TMPDIR"] == "/scratch"
        assert int(k8s["activeDeadlineSeconds"]) > 0, step
        res = container["resources"]
        if step.startswith("finetune-"):  # a small launcher pod; the job's pods get the GPUs
            assert "accelerator" not in res
            launch = json.loads(env["RESET_TRAINING"])
            assert launch["engine"] == "pytorchjob" and launch["resources"]["gpus"] == 8
            assert launch["resources"]["gpu_type"] == "NVIDIA-A100-SXM4-80GB"
            # the training pods get Secret references (name, key, optional), never values
            assert launch["secrets"]["AWS_SECRET_ACCESS_KEY"] == ["reset-s3", "AWS_SECRET_ACCESS_KEY", False]
        else:
            want = cfg.cluster.step_resources(step)
            assert res["memoryRequest"] > 0 and res["cpuRequest"] > 0
            if want.gpus:
                assert res["accelerator"]["resourceCount"] == str(want.gpus)
                assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": want.gpu_type}
    # memory requests differ by step (no longer one size for every pod)
    mems = {spec_exec[by_step[s]]["container"]["resources"]["memoryRequest"] for s in ("mix", "select", "generate")}
    assert len(mems) == 3
    # no model weights travel as KFP artifacts: the fine-tuning steps' outputs are LoRA adapters
    assert cfg.train.method == "lora" and cfg.continued_train.method == "lora"
    outputs = {a for c in docs[0]["components"].values()
               for a, d in c.get("outputDefinitions", {}).get("artifacts", {}).items()
               if d["artifactType"]["schemaTitle"] == "system.Model"}
    assert outputs == {"checkpoint"}  # the one fine-tuning component's output (MTL and ReSet)
    # caching only where the config allows it; the parent run is no input of any step
    cached = {t["taskInfo"]["name"] for t in inner.values() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == set(cfg.cluster.cache_steps)
    for t in inner.values():
        assert "parent_run_id" not in t.get("inputs", {}).get("parameters", {})
