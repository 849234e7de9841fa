"""The cluster commands (pipelines/kfp_api.py) through the real kfp.Client (kfp 2.17) against a
local stand-in of the KFP v2beta1 REST API (tests/kfp_standin.py): the requests are recorded and
checked: pipelines uploaded with versions named by the git commit, runs with namespace, experiment,
service account, pipeline root and the config's parameters, the run's state streamed by --wait,
recurring runs with their cron, the promotion pipeline; the token only in the Authorization header."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main

from .conftest import REPO
from .kfp_standin import KfpStandIn

TOKEN = "kfp-token-5ecret-0123456789"
SECRETS = (TOKEN, "aws-5ecret-key-987654", "mlflow-5ecret-pw-55")
CONFIG = ["--config", str(REPO / "configs" / "tiny.yaml"),
          "--set", "tracking.tracking_uri=http://mlflow.team-ml.svc.cluster.local:5000",
          "--set", "cluster.image=registry.example/reset:1.2.3"]


@pytest.fixture()
def env(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS[1])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS[2])


@pytest.fixture()
def api():
    with KfpStandIn() as standin:
        yield standin


@pytest.fixture()
def checkout(tmp_path, monkeypatch) -> str:
    """A clean git checkout to run the CLI in: its HEAD names the version."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "README").write_text("x\n")
    git("add", "README")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init")
    monkeypatch.chdir(tmp_path)
    return git("rev-parse", "HEAD")


def _no_secret_in_any_body(api: KfpStandIn) -> None:
    for r in api.requests:
        assert r.headers.get("authorization") == f"Bearer {TOKEN}", (r.method, r.path)
        for secret in SECRETS:
            assert secret.encode() not in r.raw, (r.method, r.path)
            assert secret not in json.dumps(r.query)


# The run form (the KFP UI's typed fields): which config key each one carries. Written out here, from
# the form's contract, so the expected parameters do not come from the code that builds them.
RUN_FORM = {
    ("model", "base"): "base_model",
    ("data", "instruction"): "instruction_data",
    ("data", "grounded"): "grounded_data",
    ("select", "mode"): "mode",
    ("train", "epochs"): "epochs",
    ("train", "learning_rate"): "learning_rate",
    ("generate", "samples_per_setting"): "samples_per_setting",
    ("judge", "llm", "base_url"): "judge_endpoint",
    ("judge", "llm", "model"): "judge_model",
    ("register", "model_name"): "registered_model_name",
}


def _config_as_written(cfg_args) -> dict:
    """The config file as YAML reads it, with the --set overrides put in by hand."""
    doc = yaml.safe_load(Path(cfg_args[1]).read_text())
    for item in cfg_args[3::2]:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        d = doc
        for k in parents:
            d = d.setdefault(k, {})
        d[leaf] = yaml.safe_load(value)
    return doc


def _leaves(doc: dict, path: tuple = ()):
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


def _contains(actual, written) -> bool:
    """`actual` holds what was written (a section parameter also holds the defaults of unset keys)."""
    if isinstance(written, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in written.items())
    if isinstance(written, list):
        return (isinstance(actual, list) and len(actual) == len(written)
                and all(_contains(a, w) for a, w in zip(actual, written, strict=True)))
    return actual == written


def _mismatches(params: dict, doc: dict, sections: set[str], form: bool = True) -> list[str]:
    """Every key the config file (and --set) wrote that the run's parameters do not carry as written:
    a run-form key as its form field (a source list as comma-separated paths), the rest in its section."""
    wrong = []
    for path, value in _leaves(doc):
        if path[0] not in sections:
            continue
        if form and path in RUN_FORM:
            want = ",".join(value) if isinstance(value, list) else value
            got = params.get(RUN_FORM[path])
            section = params.get(path[0], {})
            for k in path[1:-1]:
                section = section.get(k, {})
            if got != want or path[-1] in section:  # shown, and set, in one place only
                wrong.append(f"{'.'.join(path)}: form field {RUN_FORM[path]} = {got!r}, written {want!r}")
            continue
        got = params.get(path[0])
        for k in path[1:]:
            got = got.get(k) if isinstance(got, dict) else None
        if not _contains(got, value):
            wrong.append(f"{'.'.join(path)}: parameter {got!r}, written {value!r}")
    return wrong


def _check_params(params: dict, spec: dict, cfg_args=CONFIG) -> None:
    """The run's parameters: exactly the compiled pipeline's inputs, and every value the config file
    and --set wrote, where the pipeline reads it."""
    inputs = set(spec["root"]["inputDefinitions"]["parameters"])
    assert set(params) == inputs
    sections = {k for k, v in params.items() if isinstance(v, dict)}
    doc = _config_as_written(cfg_args)
    assert set(doc) - {"cluster"} <= sections  # cluster settings are compiled into the spec, not parameters
    assert _mismatches(params, doc, sections) == []
    assert params["tracking"]["tracking_uri"] == "http://mlflow.team-ml.svc.cluster.local:5000"
    assert params["base_model"] == "builtin:tiny-llama" and params["learning_rate"] == 0.002


def test_the_parameter_check_finds_a_value_that_is_not_the_configs():
    """Positive control of _check_params' comparison: a changed value, a form value left in its
    section and a missing key are each named."""
    doc = _config_as_written(CONFIG)
    params = {"train": {"epochs": 1, "learning_rate": 0.002}, "epochs": 1.0, "learning_rate": 0.002}
    assert _mismatches(params, {"train": doc["train"]}, {"train"})  # lora_r and others missing
    good = {"train": {k: v for k, v in doc["train"].items() if k not in ("epochs", "learning_rate")},
            "epochs": 1.0, "learning_rate": 0.002}
    assert _mismatches(good, {"train": doc["train"]}, {"train"}) == []
    assert _mismatches({**good, "learning_rate": 0.003}, {"train": doc["train"]}, {"train"})
    assert _mismatches({**good, "train": {**good["train"], "epochs": 1}}, {"train": doc["train"]}, {"train"})
    assert _mismatches({**good, "train": {**good["train"], "lora_r": 8}}, {"train": doc["train"]}, {"train"})


def test_upload_puts_both_pipelines_with_a_version_named_by_the_commit(api, env, checkout, capsys):
    assert main(["upload", *CONFIG, "--host", api.url, "--namespace", "team-ml"]) == 0
    uploads = api.calls("POST", "/pipelines/upload")
    assert [r.query["name"] for r in uploads] == ["reset", "reset-promotion"]
    assert all(r.query["namespace"] == "team-ml" for r in uploads)
    versions = api.calls("POST", "/pipelines/upload_version")
    assert [r.query["name"] for r in versions] == [checkout, checkout]
    by_id = {p["pipeline_id"]: p["display_name"] for p in api.pipelines.values()}
    assert [by_id[r.query["pipelineid"]] for r in versions] == ["reset", "reset-promotion"]
    # the uploaded files are the compiled pipelines: spec + the Kubernetes platform document
    spec, platform = versions[0].body["uploadfile"]
    assert spec["pipelineInfo"]["name"] == "reset" and "kubernetes" in platform["platforms"]
    assert versions[1].body["uploadfile"][0]["pipelineInfo"]["name"] == "reset-promotion"
    assert "registry.example/reset:1.2.3" in json.dumps(spec["deploymentSpec"])
    _no_secret_in_any_body(api)

    # again, same commit: the versions exist and are reused, nothing is uploaded
    n = len(api.requests)
    assert main(["upload", *CONFIG, "--host", api.url, "--namespace", "team-ml"]) == 0
    assert not [r for r in api.requests[n:] if r.method == "POST"]
    assert capsys.readouterr().out.count(f"version {checkout} exists") == 2


def test_a_dirty_checkout_never_reuses_a_commit_name(api, env, checkout, capsys):
    Path("README").write_text("changed\n")  # a tracked file differs from HEAD
    assert main(["upload", *CONFIG, "--host", api.url]) == 0
    name = api.calls("POST", "/pipelines/upload_version")[0].query["name"]
    assert name.startswith(f"{checkout}-dirty-") and "uncommitted changes" in capsys.readouterr().err


def test_submit_runs_the_uploaded_version_with_sa_root_and_parameters_and_streams_its_state(api, env, checkout,
                                                                                         capsys):
    assert main(["upload", *CONFIG, "--host", api.url, "--namespace", "team-ml"]) == 0
    api.run_script = [("PENDING", {}), ("RUNNING", {"start-run": "RUNNING"}),
                      ("RUNNING", {"start-run": "SUCCEEDED", "mix": "RUNNING"}),
                      ("SUCCEEDED", {"start-run": "SUCCEEDED", "mix": "SUCCEEDED", "register": "SUCCEEDED"})]
    capsys.readouterr()
    rc = main(["submit", *CONFIG, "--host", api.url, "--namespace", "team-ml", "--experiment", "ci",
               "--run-name", "ci-abc", "--service-account", "reset-pipeline", "--pipeline-root", "s3://reset-data/kfp",
               "--pipeline-version", checkout, "--wait", "--poll", "0.01"])
    out = capsys.readouterr().out
    assert rc == 0, out
    exp = api.calls("POST", "/experiments")[0].body
    assert exp["display_name"] == "ci" and exp["namespace"] == "team-ml"
    run = api.calls("POST", "/runs")[0].body
    assert run["display_name"] == "ci-abc" and run["service_account"] == "reset-pipeline"
    assert run["experiment_id"] == next(iter(api.experiments))
    assert run["runtime_config"]["pipeline_root"] == "s3://reset-data/kfp"
    ref = run["pipeline_version_reference"]
    uploaded = api.calls("POST", "/pipelines/upload_version")[0].body["uploadfile"][0]
    _check_params(run["runtime_config"]["parameters"], uploaded)
    assert api.versions[ref["pipeline_version_id"]]["display_name"] == checkout
    assert api.pipelines[ref["pipeline_id"]]["display_name"] == "reset" and "pipeline_spec" not in run
    # --wait: the run's state and each task's state, as they change, once each
    lines = [x.split("] ", 1)[1] for x in out.splitlines() if x.startswith("[")]
    assert [x for x in lines if x.startswith("run ")] == [f"run {run_id}: {s}" for run_id in api.runs
                                                         for s in ("PENDING", "RUNNING", "SUCCEEDED")]
    assert [x.strip() for x in lines if not x.startswith("run ")] == [
        "start-run: RUNNING", "start-run: SUCCEEDED", "mix: RUNNING", "mix: SUCCEEDED", "register: SUCCEEDED"]
    _no_secret_in_any_body(api)


def test_submit_inline_and_a_failed_run_exits_1_naming_the_task(api, env, capsys):
    api.run_script = [("RUNNING", {"mix": "RUNNING"}), ("FAILED", {"mix": "FAILED"})]
    rc = main(["submit", *CONFIG, "--host", api.url, "--wait", "--poll", "0.01"])
    assert rc == 1
    assert "FAILED in mix: task failed" in capsys.readouterr().out
    run = api.calls("POST", "/runs")[0].body
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "reset"
    assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]
    _check_params(run["runtime_config"]["parameters"], run["pipeline_spec"]["pipeline_spec"])
    assert "pipeline_version_reference" not in run
    assert "service_account" not in run and "pipeline_root" not in run["runtime_config"]
    assert api.calls("GET", "/healthz")  # no namespace given: the client asked whether KFP is multi-user
    _no_secret_in_any_body(api)


def test_submit_names_a_missing_version(api, env, capsys):
    rc = main(["submit", *CONFIG, "--host", api.url, "--pipeline-version", "deadbeef"])
    assert rc == 2
    assert "--pipeline-version" in capsys.readouterr().err and not api.calls("POST", "/runs")


def test_schedule_creates_a_recurring_run_with_its_cron(api, env, checkout, capsys):
    assert main(["upload", *CONFIG, "--host", api.url, "--namespace", "team-ml"]) == 0
    rc = main(["schedule", *CONFIG, "--host", api.url, "--namespace", "team-ml", "--cron", "0 0 2 * * 6",
               "--name", "weekly", "--service-account", "reset-pipeline", "--pipeline-version", checkout])
    assert rc == 0
    body = api.calls("POST", "/recurringruns")[0].body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * 6"}}
    assert body["display_name"] == "weekly" and body["mode"] == "ENABLE" and body["no_catchup"] is True
    assert int(body["max_concurrency"]) == 1 and body["service_account"] == "reset-pipeline"
    assert api.versions[body["pipeline_version_reference"]["pipeline_version_id"]]["display_name"] == checkout
    uploaded = api.calls("POST", "/pipelines/upload_version")[0].body["uploadfile"][0]
    _check_params(body["runtime_config"]["parameters"], uploaded)
    _no_secret_in_any_body(api)


def test_a_five_field_cron_is_refused_before_any_request(api, env, capsys):
    assert main(["schedule", *CONFIG, "--host", api.url, "--cron", "0 2 * * 6"]) == 2
    assert "'0 0 2 * * 6'" in capsys.readouterr().err and not api.requests


def test_promote_with_a_host_runs_the_promotion_pipeline(api, env, checkout, capsys):
    assert main(["upload", *CONFIG, "--host", api.url, "--namespace", "team-ml"]) == 0
    rc = main(["promote", *CONFIG, "--host", api.url, "--namespace", "team-ml", "--service-account", "reset-pipeline",
               "--pipeline-version", checkout, "--challenger", "7", "--wait", "--poll", "0.01"])
    assert rc == 0
    run = api.calls("POST", "/runs")[0].body
    assert api.pipelines[run["pipeline_version_reference"]["pipeline_id"]]["display_name"] == "reset-promotion"
    params = run["runtime_config"]["parameters"]
    promotion_spec = api.calls("POST", "/pipelines/upload_version")[1].body["uploadfile"][0]
    assert set(params) == set(promotion_spec["root"]["inputDefinitions"]["parameters"])
    assert params["challenger"] == "7"
    sections = {k for k, v in params.items() if isinstance(v, dict)}
    assert sections == {"register", "evaluate", "model", "judge", "tracking"}
    # the promotion pipeline has no run form: every written key sits in its section
    assert _mismatches(params, _config_as_written(CONFIG), sections, form=False) == []
    assert params["model"]["base"] == "builtin:tiny-llama" and params["register"]["model_name"] == "reset-tiny"
    _no_secret_in_any_body(api)


def test_the_standin_refuses_a_pipeline_kfps_schemas_do_not_accept(api, env, tmp_path):
    """The uploads above passed the stand-in's strict read (tests/kfp_schemas.py); one misspelt
    Kubernetes key is refused, as the API server refuses a spec it cannot read."""
    import kfp
    from kfp_server_api.exceptions import ApiException

    from pipelines import definitions
    from reset.config import load_config

    path = tmp_path / "p.yaml"
    definitions.compile_to(load_config(CONFIG[1], CONFIG[3::2]), definitions.TRAINING, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mount = next(cfg for cfg in executors.values() if "pvcMount" in cfg)["pvcMount"][0]
    mount["mountpath"] = mount.pop("mountPath")
    path.write_text(yaml.safe_dump_all(docs))
    client = kfp.Client(host=api.url, existing_token=TOKEN)
    with pytest.raises(ApiException) as err:
        client.upload_pipeline(str(path), pipeline_name="bad")
    assert err.value.status == 400 and "mountpath" in str(err.value.body)
    assert api.pipelines == {}
