"""Model registry: log the ReSet model, alias it `challenger`, and move `champion` to it only
when it passes the gates (reset.evaluation.gate) on the frozen test split: non-inferior to this
run's MTL model on both axes of the paper (instruction following and faithfulness) and superior on
at least one, and non-inferior to the current champion re-scored on the same split
(`champion_checkpoint` fetches it for the evaluate step; stored figures from another run are never
compared). The decision, its reason and the deltas with their intervals are tagged on the
version; its description states the verdict. Without gates (no paired evaluation on a test
split) nothing is promoted. Each use of a test split against a registered model is counted
(`reserve_test_use`), so the gate can spend its alpha over uses.

The model is exported once (`export_model`): merged into plain weights when it is a LoRA
checkpoint, wrapped as an MLflow pyfunc and uploaded to `register.export_uri` (S3), and the version
is registered by that location (tags reset.export_uri and reset.weights_uri: the plain weights that
KServe serves). The champion alias only moves through `move_champion`: under the promotion lock
(`promotion_lock`, a registered model created only if absent) and only if it still points at the
version the decision compared against (compare-and-set), so two promotions at once cannot both
move it. The promotion pipeline (reset.promotion) uses the same two.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reset.config import RegisterConfig
from reset.errors import duplicate_row
from reset.evaluation import GateDecision

METRIC_TAG = "metric."
SOURCE_TAG = "reset.export_uri"  # where the version's MLflow model was exported (its source)
WEIGHTS_TAG = "reset.weights_uri"  # its plain Hugging Face weights (what KServe's storageUri names)
PROMOTED_BY_TAG = "reset.promoted_by"
UNKNOWN = object()  # log_and_register: the evaluated champion is not known


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "safetensors", "mlflow")]


def champion_checkpoint(cfg: RegisterConfig, dest: str | os.PathLike[str]) -> tuple[str, Path] | None:
    """(version, local model directory) of the current champion, downloaded under `dest`; None when
    there is no champion (or no registered model) yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        champ = client.get_model_version_by_alias(cfg.model_name, cfg.champion_alias)
    except MlflowException:
        return None
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.model_name}@{cfg.champion_alias}",
                                                     dst_path=str(dest)))
    found = sorted(p.parent for p in (local / "artifacts").rglob("config.json"))
    if not found:
        raise RuntimeError(f"models:/{cfg.model_name}@{cfg.champion_alias} (v{champ.version}) holds no model "
                           "directory (config.json) under artifacts/")
    return str(champ.version), found[0]


def gated_decision(cfg: RegisterConfig, gates: Mapping[str, GateDecision], has_champion: bool) -> dict[str, Any]:
    """Promote when every gate passed (and register.promote is on). `gates`: reference -> decision.
    The reason is the gates' outcome in words, then what the registry did."""
    failed = {ref: g for ref, g in gates.items() if not g.passed}
    words = "; ".join(g.reason for g in gates.values())
    if not gates:
        return {"promote": False, "reason": f"no paired evaluation to gate on: stays {cfg.challenger_alias}"}
    if failed:
        return {"promote": False, "reason": f"{words}: stays {cfg.challenger_alias}, NOT promoted"}
    if not cfg.promote:
        return {"promote": False, "reason": f"{words}; register.promote is off: the promotion pipeline decides"}
    first = "" if has_champion else f"no {cfg.champion_alias} yet; "
    return {"promote": True, "reason": f"{first}{words}: promoted to @{cfg.champion_alias}"}


def log_and_register(model_dir: str | os.PathLike[str], metrics: Mapping[str, float], cfg: RegisterConfig,
                     max_new_tokens: int = 64, system_prompt: str = "", *,
                     gates: Mapping[str, GateDecision] | None = None, description: str = "",
                     evaluated_champion: str | None | object = UNKNOWN,
                     version_tags: Mapping[str, str] | None = None, no_gate_reason: str = "",
                     card: str = "") -> dict[str, Any]:
    """Inside an active MLflow run: export the model once (`export_model`: a LoRA checkpoint merged
    into plain weights, one upload to `cfg.export_uri`), register a version whose source is that
    location, alias it challenger, and move champion to it when the gates say so, under the
    promotion lock and only if the champion is still `evaluated_champion` (the version the gates
    compared against; UNKNOWN: the one read when deciding). No gates: never promoted
    (`no_gate_reason` says why). `card`: the model card (reset.cards) written beside the weights."""
    import mlflow

    run_id = mlflow.active_run().info.run_id
    exported = export_model(model_dir, cfg, run_id=run_id, max_new_tokens=max_new_tokens,
                            system_prompt=system_prompt, card=card)
    client = mlflow.MlflowClient()
    version = register_version(client, cfg.model_name, exported, run_id)
    for k, v in metrics.items():
        client.set_model_version_tag(cfg.model_name, version, METRIC_TAG + k, str(v))
    for k, v in (version_tags or {}).items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    set_alias(client, cfg.model_name, cfg.challenger_alias, version)
    champion = _champion_version(client, cfg)
    if gates is None:
        decision = {"promote": False, "champion_version": champion,
                    "reason": f"{no_gate_reason or 'no paired evaluation to gate on'}: stays {cfg.challenger_alias}"}
    else:
        decision = {**gated_decision(cfg, gates, champion is not None), "champion_version": champion}
        for ref, g in gates.items():
            for k, v in g.tags(f"gate.vs_{ref}").items():
                client.set_model_version_tag(cfg.model_name, version, k, v)
    if decision["promote"]:
        expected = decision.get("champion_version") if evaluated_champion is UNKNOWN else evaluated_champion
        moved, why = move_champion(client, cfg, version, expected=expected, holder=f"register run {run_id}",
                                   reason=decision["reason"])
        if not moved:
            decision = {**decision, "promote": False, "reason": why}
    client.set_model_version_tag(cfg.model_name, version, "promotion", decision["reason"][:5000])
    if description:
        client.update_model_version(cfg.model_name, version, description=description)
    return {"model_name": cfg.model_name, "version": version, "model_uri": f"models:/{cfg.model_name}/{version}",
            "source": exported.source, "weights_uri": exported.weights_uri, **decision}


TEST_USES_TAG = "reset.test_uses."


def reserve_test_use(cfg: RegisterConfig, digest: str, *, holder: str, client=None) -> int:
    """Count one more use of the test split with SHA-256 `digest` against registered model
    `cfg.model_name` (a tag on the registered model, `reset.test_uses.<digest[:16]>`, incremented
    under the promotion lock) and return its number: 1 for the first use. The gate tests use k at
    alpha * 6 / (pi^2 k^2)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = client or mlflow.MlflowClient()
    try:
        client.create_registered_model(cfg.model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    key = TEST_USES_TAG + digest[:16]
    with promotion_lock(client, cfg.model_name, holder):
        tags = client.get_registered_model(cfg.model_name).tags or {}
        use = int(tags.get(key, "0") or 0) + 1
        client.set_registered_model_tag(cfg.model_name, key, str(use))
    return use


def _signature():
    """(input example, signature) of the pyfunc: a table of instruction (+ optional context) in,
    one string per row out."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame([{"instruction": "Who patented the telephone?",
                             "context": "The telephone was patented by Alexander Graham Bell."},
                            {"instruction": "Write a haiku about rain.", "context": None}])
    return example, infer_signature(example, ["Alexander Graham Bell patented it.", "Soft rain on the roof."])


def set_alias(client, model_name: str, alias: str, version: str, attempts: int = 5) -> None:
    """Point `alias` at `version`. MLflow's SQL store sets an alias by reading whether it exists and
    then inserting or updating it, so two runs that alias the same model at once can both insert and
    one fails on the table's unique key (seen with two local runs sharing one SQLite store). The row
    is there after such a failure, so trying again updates it: up to `attempts` tries."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(model_name, alias, str(version))
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not duplicate_row(exc):
                raise
            time.sleep(0.05 * (attempt + 1))


def _champion_version(client, cfg: RegisterConfig) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(cfg.model_name, cfg.champion_alias).version)
    except MlflowException:
        return None


# ------------------------------------------------------------------------------------------ export
@dataclass(frozen=True)
class Exported:
    source: str
    """The MLflow model's location (the registered version's source)."""
    weights_uri: str
    """Its plain Hugging Face weights (config.json, safetensors, tokenizer): KServe's storageUri."""


def export_model(model_dir: str | os.PathLike[str], cfg: RegisterConfig, *, run_id: str, max_new_tokens: int = 64,
                 system_prompt: str = "", card: str = "") -> Exported:
    """Write the final model once: a LoRA checkpoint merged into plain weights (loading.merge_to),
    wrapped as an MLflow pyfunc (models-from-code, nothing pickled), uploaded once to
    `<cfg.export_uri>/<model_name>/<run_id>/` (or, without export_uri, logged to the active run's
    artifacts under `model/`). The model card (`card`, else one from the checkpoint's provenance
    alone: reset.cards) is the README.md of the weights directory and of the MLflow model."""
    import tempfile

    import mlflow
    import yaml

    import reset
    from reset.cards import model_card
    from reset.data import storage
    from reset.models import loading

    pkg = Path(reset.__file__).parent
    example, signature = _signature()
    with tempfile.TemporaryDirectory(prefix="reset-export-") as tmp:
        weights = Path(model_dir)
        if loading.is_adapter_dir(weights):
            weights = loading.merge_to(weights, Path(tmp) / "weights")  # the one merge
        package = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(package),
            python_model=str(pkg / "serving" / "pyfunc_entry.py"),
            model_config={"max_new_tokens": max_new_tokens, "system_prompt": system_prompt},
            artifacts={"model_dir": str(weights)},
            code_paths=[str(pkg)],
            pip_requirements=pip_requirements(),
            signature=signature,
            input_example=example,
        )
        mlmodel = yaml.safe_load((package / "MLmodel").read_text())
        rel = mlmodel["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
        card = card or model_card(model_name=cfg.model_name, provenance=loading.read_provenance(model_dir),
                                  run_id=run_id)
        for where in (package / rel, package):  # beside the weights (what KServe serves) and the MLflow model
            (where / "README.md").write_text(card, encoding="utf-8")
        if cfg.export_uri:
            source = f"{cfg.export_uri}/{cfg.model_name}/{run_id}"
            storage.upload(package, source)  # the one upload
        else:
            mlflow.log_artifacts(str(package), "model")
            source = mlflow.get_artifact_uri("model")
    return Exported(source, f"{source}/{rel}")


def register_version(client, model_name: str, exported: Exported, run_id: str) -> str:
    """A new version of `model_name` (created if needed) whose source is the exported location."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(model_name, exported.source, run_id=run_id,
                                     tags={SOURCE_TAG: exported.source, WEIGHTS_TAG: exported.weights_uri})
    return str(mv.version)


def version_checkpoint(client, model_name: str, version: str, dest: str | os.PathLike[str]) -> Path:
    """A local copy of version `version`'s plain weights: its MLflow model downloaded once under
    `dest` (into a temporary directory renamed into place, so processes sharing the cache never see
    a partial copy; a finished download is reused)."""
    import shutil
    import tempfile

    import mlflow
    import yaml

    root = Path(dest) / model_name / str(version)
    if not (root / ".complete").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root.parent))
        try:
            mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=str(tmp),
                                                tracking_uri=mlflow.get_tracking_uri())
            (tmp / ".complete").write_text(str(client.get_model_version(model_name, version).source))
            for _ in range(3):
                try:
                    os.rename(tmp, root)
                    break
                except OSError:
                    if (root / ".complete").exists():  # another process finished first: use its copy
                        break
                    junk = root.with_name(f"{root.name}.partial-{os.getpid()}-{time.time_ns()}")
                    with contextlib.suppress(OSError):
                        os.rename(root, junk)  # an interrupted download: out of the way, then retry
                    shutil.rmtree(junk, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    rel = mlmodel["flavors"]["python_function"].get("artifacts", {}).get("model_dir", {}).get("path")
    path = root / rel if rel else None
    if path is None or not (path / "config.json").exists():
        raise RuntimeError(f"models:/{model_name}/{version} holds no model directory (config.json) at "
                           f"{rel or 'artifacts/model_dir'}")
    return path


# ------------------------------------------------------------------------- the champion, one at a time
LOCK_SUFFIX = ".promotion-lock"
LOCK_HOLDER_TAG = "reset.lock.holder"
LOCK_SINCE_TAG = "reset.lock.since"
LOCK_WAIT_S = 600.0
LOCK_STALE_S = 3600.0  # the lock is held for seconds (a re-read and an alias write); older = its holder died


class PromotionLocked(RuntimeError):
    """Another promotion held the lock longer than we would wait."""


def lock_name(model_name: str) -> str:
    return model_name + LOCK_SUFFIX


@contextlib.contextmanager
def promotion_lock(client, model_name: str, holder: str, *, wait_s: float = LOCK_WAIT_S,
                   stale_s: float = LOCK_STALE_S, poll_s: float = 0.5, log=print) -> Iterator[None]:
    """Hold the promotion lock of `model_name`: a registered model `<model_name>.promotion-lock`,
    created only if absent (the store's unique name is the mutual exclusion, on SQLite, PostgreSQL
    and through the tracking server alike) and deleted on release. A lock older than `stale_s`
    (its holder died) is broken by renaming it to a name derived from its holder: of two processes
    breaking the same stale lock only one rename succeeds, and neither can break a fresh lock."""
    from mlflow.exceptions import MlflowException

    name = lock_name(model_name)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(
                name, tags={LOCK_HOLDER_TAG: holder, LOCK_SINCE_TAG: f"{time.time():.3f}"},
                description=f"Promotion lock of {model_name}'s champion alias (reset.registry.promotion_lock); "
                            f"deleted when released, broken after {stale_s:.0f}s.")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _lock_holder(client, name)
        if held is None:  # released in between
            continue
        other, since = held
        age = time.time() - since
        if age > stale_s:
            stale = f"{name}.stale.{hashlib.sha256(other.encode()).hexdigest()[:12]}"
            try:
                client.rename_registered_model(name, stale)
                log(f"[registry] broke the stale lock {name} of {other!r} ({age:.0f}s old); kept as {stale}")
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
            continue
        if time.monotonic() >= deadline:
            raise PromotionLocked(f"{model_name}: the promotion lock {name} is held by {other!r} ({age:.0f}s); "
                                  f"gave up after {wait_s:.0f}s")
        time.sleep(poll_s)  # waiting for another promotion's few seconds, bounded by the deadline
    try:
        yield
    finally:
        held = _lock_holder(client, name)
        if held is not None and held[0] == holder:
            client.delete_registered_model(name)
        else:
            log(f"[registry] the lock {name} is no longer ours ({held[0] if held else 'gone'!r}): left as it is")


def _lock_holder(client, name: str) -> tuple[str, float] | None:
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    tags = rm.tags or {}
    since = float(tags.get(LOCK_SINCE_TAG) or (rm.creation_timestamp or 0) / 1000)
    return tags.get(LOCK_HOLDER_TAG, "?"), since


def move_champion(client, cfg: RegisterConfig, version: str, *, expected: str | None, holder: str, reason: str,
                  wait_s: float = LOCK_WAIT_S, log=print) -> tuple[bool, str]:
    """Compare-and-set of the champion alias under the promotion lock: point it at `version` only
    if it still points at `expected` (None: no champion), the version the decision compared
    against. Returns (moved, reason)."""
    with promotion_lock(client, cfg.model_name, holder, wait_s=wait_s, log=log):
        current = _champion_version(client, cfg)
        if current == str(version):
            return True, f"v{version} is already {cfg.champion_alias}"
        if current != (None if expected is None else str(expected)):
            was = f"v{expected}" if expected is not None else "absent"
            return False, (f"{cfg.champion_alias} not moved: it is v{current} now, {was} when this decision was "
                           f"made (another promotion moved it); promote again against v{current}")
        set_alias(client, cfg.model_name, cfg.champion_alias, str(version))
        client.set_model_version_tag(cfg.model_name, str(version), PROMOTED_BY_TAG, holder)
    log(f"[registry] {cfg.model_name} @{cfg.champion_alias}: {f'v{expected}' if expected else 'none'} -> "
        f"v{version} ({holder})")
    return True, reason
