"""Registry export and promotion against real MLflow stores: the final model exported once to S3
(merged) and registered by that location; the promotion step re-scoring champion and challenger on
a frozen set (reset/promotion.py) with the gate; the promotion lock and the compare-and-set of the
champion alias on a local SQLite store; and two promotions at once, as two `python -m pipelines
promote` processes (kfp.local) against the manifest's MLflow server on a real PostgreSQL, where
only one moves the alias."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from reset import registry, steps
from reset.config import ConfigError, ModelConfig, RegisterConfig, TrainConfig
from reset.data.records import write_jsonl
from reset.data.storage import upload
from reset.promotion import champion_location, promote

from .conftest import REPO, wait_for
from .pg_mlflow import manifest_mlflow

FAST = {"max_new_tokens": 4, "batch_size": 8, "backend": "hf"}


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("promo", artifact_location=(tmp_path / "art").as_uri())
    yield uri, exp, tmp_path
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def frozen(demo, tmp_path_factory):
    """A frozen evaluation set (4 IF + 4 grounded examples) and its sha256."""
    path = tmp_path_factory.mktemp("frozen") / "frozen.jsonl"
    write_jsonl(path, demo[0][:4] + demo[1][:4])
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _register(model_dir, exp, cfg: RegisterConfig, champion: bool = False) -> str:
    """Export + register a version (as the register step does), without any promotion decision."""
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=exp) as run:
        exported = registry.export_model(model_dir, cfg, run_id=run.info.run_id, max_new_tokens=4)
        version = registry.register_version(client, cfg.model_name, exported, run.info.run_id)
    if champion:
        assert registry.move_champion(client, cfg, version, expected=None, holder="test", reason="first")[0]
    return version


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


# ------------------------------------------------------------------------------------------ export
def test_the_final_model_is_exported_once_merged_and_registered_by_its_s3_location(tiny_model_dir, demo, store, s3,
                                                                                    tmp_path):
    from reset.models.finetune import finetune
    from reset.registry import log_and_register

    s3.create_bucket(Bucket="exports")
    adapter = tmp_path / "adapter"
    finetune(tiny_model_dir, demo[0][:4] + demo[1][:4], adapter,
             TrainConfig(max_steps=2, batch_size=4, lora_r=4, lora_alpha=8, log_every=100), ModelConfig(max_length=192),
             provenance={"stage": "reset"}, log=lambda _: None)
    assert (adapter / "adapter_config.json").exists()
    _, exp, root = store
    cfg = RegisterConfig(model_name="exp", export_uri="s3://exports/models")
    with mlflow.start_run(experiment_id=exp) as run:
        out = log_and_register(adapter, {"if_prompt_acc": 0.5, "faithfulness": 0.5}, cfg, max_new_tokens=4)
    rid = run.info.run_id
    source = f"s3://exports/models/exp/{rid}"
    client = mlflow.MlflowClient()
    mv = client.get_model_version("exp", out["version"])
    assert mv.source == out["source"] == source
    assert mv.tags[registry.WEIGHTS_TAG] == out["weights_uri"] == f"{source}/artifacts/weights"
    keys = _keys(s3, "exports", f"models/exp/{rid}/")
    weights = [k for k in keys if k.startswith(f"models/exp/{rid}/artifacts/weights/")]
    assert f"models/exp/{rid}/MLmodel" in keys
    # merged: plain weights with their config and tokenizer, no adapter left; one copy of them
    names = {k.rsplit("/", 1)[1] for k in weights}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names
    assert not any("adapter" in k for k in keys)
    assert sum(k.endswith(".safetensors") for k in _keys(s3, "exports")) == 1
    # ... and not a second time into the MLflow run's artifacts
    assert not [p for p in (root / "art").rglob("*.safetensors")]
    # no gates, no promotion: a challenger only (the alias moves on a gate's outcome, below by hand)
    assert not out["promote"] and str(client.get_model_version_by_alias("exp", "challenger").version) == out["version"]
    assert registry.move_champion(client, cfg, out["version"], expected=None, holder="test", reason="first")[0]
    # the registered model loads from that location and answers; champion_location names the weights
    model = mlflow.pyfunc.load_model("models:/exp@champion")
    answers = model.predict([{"instruction": "Say hello."}])
    assert len(answers) == 1 and isinstance(answers[0], str)
    loc = champion_location(steps.config(register={"model_name": "exp"},
                                         tracking={"tracking_uri": store[0], "experiment": "promo"}))
    assert loc == {"model_name": "exp", "version": out["version"], "source": source, "weights_uri": out["weights_uri"]}


# ------------------------------------------------------------------------------------------ the step
def test_the_gate_decides_on_the_frozen_set_and_only_then_the_alias_moves(tiny_model_dir, other_tiny_models, store,
                                                                          frozen, s3):
    s3.create_bucket(Bucket="frozen")
    upload(frozen[0], "s3://frozen/sets/v1.jsonl")
    uri, exp, root = store
    base = RegisterConfig(model_name="m", promotion_data="s3://frozen/sets/v1.jsonl", promotion_data_sha256=frozen[1])
    v1 = _register(tiny_model_dir, exp, base, champion=True)
    same = _register(tiny_model_dir, exp, base)
    v2 = _register(other_tiny_models[1], exp, base)
    tracking = {"tracking_uri": uri, "experiment": "promo"}
    client = mlflow.MlflowClient()

    # the same weights: never promoted, whatever the margins, and the reason says why
    loose = {**base.model_dump(), "margin_if": 0.99, "margin_faithfulness": 0.99}
    kept = promote(
        steps.config(register=loose, evaluate=FAST, tracking=tracking),
        challenger=same,
        cache_dir=str(root / "cache"),
        log=lambda _: None,
    )
    assert kept["outcome"] == "kept" and kept["reason"].startswith("weights identical to champion v")
    assert str(client.get_model_version_by_alias("m", "champion").version) == v1

    # other weights, but 8 examples cannot show non-inferiority within 0.03: kept, naming the bound
    strict = promote(
        steps.config(register=base.model_dump(), evaluate=FAST, tracking=tracking),
        challenger=v2,
        cache_dir=str(root / "cache"),
        log=lambda _: None,
    )
    assert strict["outcome"] == "kept" and "not shown non-inferior to champion" in strict["reason"]
    assert strict["gate"]["deltas"]["if_prompt_acc"]["n"] > 0 and strict["gate"]["deltas"]["faithfulness"]["n"] > 0

    # margins wide enough for 8 examples: non-inferior, promoted; the run and the version record it
    done = promote(
        steps.config(register=loose, evaluate=FAST, tracking=tracking),
        challenger=v2,
        cache_dir=str(root / "cache"),
        log=lambda _: None,
    )
    assert done["outcome"] == "promoted" and done["champion_version"] == v1, done["reason"]
    assert done["reason"].startswith("non-inferior to champion v")
    assert str(client.get_model_version_by_alias("m", "champion").version) == v2
    assert client.get_model_version("m", v2).tags["promotion.outcome"] == "promoted"
    run = client.get_run(done["run_id"])
    assert run.data.tags["reset.role"] == "promotion" and run.data.tags["reset.promotion_data_sha256"] == frozen[1]
    assert "gate.vs_champion.faithfulness" in run.data.tags and run.data.metrics["promoted"] == 1.0
    # each use of the frozen set was counted (three gates so far: alpha spent over them)
    assert run.data.tags["reset.test_use"] == "3"
    assert client.get_registered_model("m").tags["reset.test_uses." + frozen[1][:16]] == "3"
    assert not [m for m in client.search_registered_models() if m.name.endswith(registry.LOCK_SUFFIX)]

    # again: the challenger is the champion now, nothing to evaluate
    again = promote(
        steps.config(register=base.model_dump(), evaluate=FAST, tracking=tracking), challenger=v2, log=lambda _: None
    )
    assert again["outcome"] == "already-champion"

    # a changed evaluation set is refused, naming the key
    changed = {**base.model_dump(), "promotion_data_sha256": "0" * 64}
    with pytest.raises(ConfigError, match="register.promotion_data_sha256"):
        promote(
            steps.config(register=changed, evaluate=FAST, tracking=tracking),
            challenger=v1,
            cache_dir=str(root / "cache"),
            log=lambda _: None,
        )
    assert str(client.get_model_version_by_alias("m", "champion").version) == v2


# ------------------------------------------------------------------------------------------ the lock
class _CountingClient:
    """The real MLflow client, its create_registered_model calls counted (each one still made)."""

    def __init__(self, client):
        self._client, self.creates = client, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_registered_model(self, *args, **kwargs):
        self.creates += 1
        return self._client.create_registered_model(*args, **kwargs)


def test_the_lock_excludes_a_second_holder_until_it_is_released(store):
    """B asks for the lock A holds: refused (three tries seen) while A holds it, B's once A lets go;
    a holder that would wait no longer gives up naming the holder; the lock is gone once released."""
    client = mlflow.MlflowClient()
    b_client = _CountingClient(mlflow.MlflowClient())
    b_holds, b_errors = threading.Event(), []

    def b() -> None:
        try:
            with registry.promotion_lock(b_client, "m", "B", wait_s=600, poll_s=0.05):
                b_holds.set()
        except Exception as exc:  # noqa: BLE001 - reported below
            b_errors.append(exc)

    with registry.promotion_lock(client, "m", "A"):
        thread = threading.Thread(target=b)
        thread.start()
        wait_for("B to try the held lock three times", lambda: b_client.creates >= 3 or b_holds.is_set(), 120, 0.02)
        assert not b_holds.is_set()
        assert client.get_registered_model(registry.lock_name("m")).tags[registry.LOCK_HOLDER_TAG] == "A"
    thread.join(timeout=120)  # guards against a hang only
    assert b_holds.is_set() and b_errors == []
    with pytest.raises(MlflowException):  # B released it too
        client.get_registered_model(registry.lock_name("m"))
    with registry.promotion_lock(client, "m", "A"), pytest.raises(registry.PromotionLocked, match="held by 'A'"), \
            registry.promotion_lock(client, "m", "C", wait_s=0.2, poll_s=0.05):
        pass


def test_a_stale_lock_is_broken_once_and_a_fresh_one_never(store):
    client = mlflow.MlflowClient()
    name = registry.lock_name("m")
    client.create_registered_model(
        name, tags={registry.LOCK_HOLDER_TAG: "crashed", registry.LOCK_SINCE_TAG: str(time.time() - 7200)}
    )
    stale = f"{name}.stale.{hashlib.sha256(b'crashed').hexdigest()[:12]}"
    with registry.promotion_lock(client, "m", "B", wait_s=1, log=lambda _: None):
        assert client.get_registered_model(stale).tags[registry.LOCK_HOLDER_TAG] == "crashed"
        # another process that also saw the stale lock renames what is there now: it cannot, B keeps it
        with pytest.raises(MlflowException) as exc:
            client.rename_registered_model(name, stale)
        assert exc.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert client.get_registered_model(name).tags[registry.LOCK_HOLDER_TAG] == "B"


def test_the_champion_moves_only_from_the_version_the_decision_saw(store, tiny_model_dir):
    _, exp, _ = store
    cfg = RegisterConfig(model_name="cas")
    client = mlflow.MlflowClient()
    v1 = _register(tiny_model_dir, exp, cfg, champion=True)
    v2, v3 = _register(tiny_model_dir, exp, cfg), _register(tiny_model_dir, exp, cfg)
    assert registry.move_champion(client, cfg, v2, expected=v1, holder="p2", reason="better")[0]
    moved, why = registry.move_champion(client, cfg, v3, expected=v1, holder="p3", reason="better", log=lambda _: None)
    assert not moved and f"it is v{v2} now, v{v1} when this decision was made" in why
    assert str(client.get_model_version_by_alias("cas", "champion").version) == v2
    assert client.get_model_version("cas", v2).tags[registry.PROMOTED_BY_TAG] == "p2"


# ------------------------------------------------------------------------------------ two at once
@pytest.fixture(scope="module")
def pg_mlflow(postgres, s3_endpoint, s3, tmp_path_factory):
    """The manifest's MLflow server on a real PostgreSQL (the session's; tests/pg_mlflow.py)."""
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="mlflow")
    with manifest_mlflow(postgres, tmp_path_factory.mktemp("pg-mlflow"), s3_endpoint) as server:
        yield server.url


@pytest.mark.integration
def test_concurrent_moves_over_http_on_postgres_let_exactly_one_through(pg_mlflow, tiny_model_dir, s3):
    mlflow.set_tracking_uri(pg_mlflow)
    try:
        exp = mlflow.create_experiment("cas-http")
        cfg = RegisterConfig(model_name="cas-http", export_uri="s3://exports/cas")
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket="exports")
        v1 = _register(tiny_model_dir, exp, cfg, champion=True)
        challengers = [_register(tiny_model_dir, exp, cfg) for _ in range(4)]
        results: dict[str, tuple[bool, str]] = {}
        start = threading.Barrier(len(challengers))

        def attempt(v: str) -> None:
            client = mlflow.MlflowClient(tracking_uri=pg_mlflow)
            start.wait(timeout=30)
            results[v] = registry.move_champion(
                client, cfg, v, expected=v1, holder=f"thread {v}", reason="ok", wait_s=60, log=lambda _: None
            )

        threads = [threading.Thread(target=attempt, args=(v,)) for v in challengers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 4
        winners = [v for v, (moved, _) in results.items() if moved]
        assert len(winners) == 1, results
        champ = str(mlflow.MlflowClient().get_model_version_by_alias("cas-http", "champion").version)
        assert champ == winners[0]
        assert all("not moved" in why for v, (moved, why) in results.items() if not moved)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.integration
def test_two_promotion_pipelines_at_once_move_the_alias_once(
    pg_mlflow, tiny_model_dir, other_tiny_models, frozen, s3, tmp_path
):
    """Two `python -m pipelines promote` (kfp.local) processes started together, each with its own
    challenger, both evaluated against the same champion and both passing the gate: one moves
    the alias, the other finds it moved and stops."""
    mlflow.set_tracking_uri(pg_mlflow)
    try:
        exp = mlflow.create_experiment("race")
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket="exports")
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket="frozen")
        upload(frozen[0], "s3://frozen/race/v1.jsonl")
        cfg = RegisterConfig(model_name="race", export_uri="s3://exports/race")
        v1 = _register(tiny_model_dir, exp, cfg, champion=True)
        v2, v3 = _register(other_tiny_models[1], exp, cfg), _register(other_tiny_models[2], exp, cfg)
    finally:
        mlflow.set_tracking_uri(None)
    # margins wide enough for the 8-example frozen set: both challengers pass the gate
    args = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"tracking.tracking_uri={pg_mlflow}",
        "--set",
        "register.margin_if=0.99",
        "--set",
        "register.margin_faithfulness=0.99",
        "--set",
        "tracking.experiment=race",
        "--set",
        "register.model_name=race",
        "--set",
        "register.promotion_data=s3://frozen/race/v1.jsonl",
        "--set",
        f"register.promotion_data_sha256={frozen[1]}",
        "--set",
        "evaluate.max_new_tokens=4",
    ]
    env = {**os.environ, "RESET_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    procs = {
        v: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines",
                "promote",
                *args,
                "--challenger",
                v,
                "--output-dir",
                str(tmp_path / f"p{v}"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for v in (v2, v3)
    }
    outs = {}
    try:
        for v, p in procs.items():
            outs[v] = p.communicate(timeout=600)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for v, p in procs.items():
        assert p.returncode == 0, outs[v]

    client = mlflow.MlflowClient(tracking_uri=pg_mlflow)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id], "tags.`reset.role` = 'promotion'")
    by_challenger = {r.data.tags["reset.challenger_version"]: r.data.tags for r in runs}
    assert set(by_challenger) == {v2, v3}
    # both raced: each evaluated against v1 and passed the gate
    assert all(
        t["reset.champion_version"] == v1 and "gate.vs_champion.if_prompt_acc" in t for t in by_challenger.values()
    )
    outcomes = {v: t["reset.outcome"] for v, t in by_challenger.items()}
    assert sorted(outcomes.values()) == ["aborted", "promoted"], outcomes
    winner = next(v for v, o in outcomes.items() if o == "promoted")
    loser = next(v for v, o in outcomes.items() if o == "aborted")
    assert str(client.get_model_version_by_alias("race", "champion").version) == winner
    assert f"it is v{winner} now, v{v1} when this decision was made" in by_challenger[loser]["reset.reason"]
    assert outs[loser].strip().splitlines()[-1].startswith("aborted: ")
    assert not [m for m in client.search_registered_models() if m.name.endswith(registry.LOCK_SUFFIX)]


def test_the_register_step_does_not_promote_past_a_champion_that_moved_after_evaluate(
    store, tiny_model_dir, tmp_path, monkeypatch
):
    """The training run's own promotion (register.promote): its gates compared against champion
    v1 in the evaluate step; a promotion moved the champion before register ran: not moved."""
    import json

    from reset import steps

    monkeypatch.delenv("RESET_KFP_RUN_ID", raising=False)
    uri, exp, _ = store
    cfg = RegisterConfig(model_name="inrun")
    client = mlflow.MlflowClient()
    v1 = _register(tiny_model_dir, exp, cfg, champion=True)
    v2 = _register(tiny_model_dir, exp, cfg)
    passed = {"passed": True, "reason": "no worse", "deltas": {}}
    payload = {
        "metrics": {"reset": {"if_prompt_acc": 0.5, "faithfulness": 0.5}},
        "verdicts": [],
        "gates": {"mtl": passed, "champion": passed},
        "champion_version": v1,
    }
    (tmp_path / "scores.json").write_text(json.dumps(payload))
    assert registry.move_champion(client, cfg, v2, expected=v1, holder="promotion pipeline", reason="better")[0]
    decision = steps.register(
        str(tiny_model_dir),
        str(tmp_path / "scores.json"),
        steps.config(register=cfg.model_dump(), evaluate=FAST, tracking={"tracking_uri": uri, "experiment": "promo"}),
    )
    assert not decision["promote"] and f"it is v{v2} now, v{v1} when this decision was made" in decision["reason"]
    assert str(client.get_model_version_by_alias("inrun", "champion").version) == v2
    assert client.get_model_version("inrun", decision["version"]).tags["promotion"] == decision["reason"]


def test_the_promotion_pipeline_compiles_with_the_cluster_settings(tmp_path, monkeypatch):
    """paper-7b's promotion pipeline: one uncached task on the config's image, the promote step's
    resources (a GPU, its node selector, a timeout, scratch for the two models), the S3 Secret
    required and the LLM judge's optional, the config's sections as parameters, no secret value."""
    import yaml

    from pipelines import definitions
    from pipelines.promotion_pipeline import promotion_arguments
    from reset.config import load_config

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "promo-5ecret-value")
    cfg = load_config(REPO / "configs" / "paper-7b.yaml")
    out = tmp_path / "promotion.yaml"
    definitions.compile_to(cfg, definitions.PROMOTION, str(out), challenger="12")
    text = out.read_text()
    assert "promo-5ecret-value" not in text
    spec, platform = yaml.safe_load_all(text)
    assert spec["pipelineInfo"]["name"] == "reset-promotion"
    (task,) = spec["root"]["dag"]["tasks"].values()
    assert task["taskInfo"]["name"] == "promote" and not task.get("cachingOptions", {}).get("enableCache")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v.get("defaultValue") for k, v in params.items()} == json_roundtrip(promotion_arguments(cfg, "12"))
    container = spec["deploymentSpec"]["executors"]["exec-promote-challenger"]["container"]
    assert container["image"] == cfg.cluster.image
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RESET_CACHE_DIR"] == "/scratch/cache" and env["TMPDIR"] == "/scratch"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-promote-challenger"]
    assert {s["secretName"]: s["optional"] for s in k8s["secretAsEnv"]} == {
        "reset-s3": False,
        "reset-mlflow": True,
        "reset-llm": True,
    }
    assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert int(k8s["activeDeadlineSeconds"]) == cfg.cluster.step_resources("promote").timeout_s
    assert k8s["emptyDirMounts"][0]["sizeLimit"] == cfg.cluster.step_resources("promote").ephemeral_storage


def json_roundtrip(value):
    import json

    return json.loads(json.dumps(value))
