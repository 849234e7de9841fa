"""Model registry: log the ReSet model, alias it `challenger`, and move `champion` to it only
when it passes the gates (reset.evaluation.gate): at least as good as this run's MTL model on both
axes of the paper (instruction following and faithfulness), and as the current champion re-scored
on the same held-out set (`champion_checkpoint` fetches it for the evaluate step). The decision,
its reason and the deltas with their intervals are tagged on the version; its description states
the verdict. Without gates (a caller that has no paired evaluation) the old rule applies: every
primary axis >= the champion's stored metric - tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reset.config import RegisterConfig
from reset.evaluation import PRIMARY, GateDecision

METRIC_TAG = "metric."


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
    """Promote when every gate passed (and register.promote is on). `gates`: reference -> decision."""
    failed = {ref: g for ref, g in gates.items() if not g.passed}
    reasons = "; ".join(f"vs {ref}: {g.reason}" for ref, g in gates.items())
    if not gates:
        return {"promote": False, "reason": "no paired evaluation to gate on"}
    if failed:
        return {"promote": False, "reason": f"stays {cfg.challenger_alias}: {reasons}"}
    if not cfg.promote:
        return {"promote": False, "reason": f"gates passed ({reasons}); register.promote is off: the promotion "
                                            "pipeline decides"}
    return {"promote": True, "reason": ("" if has_champion else f"no {cfg.champion_alias} yet; ") + reasons}


def log_and_register(model_dir: str | os.PathLike[str], metrics: Mapping[str, float], cfg: RegisterConfig,
                     max_new_tokens: int = 64, system_prompt: str = "", *,
                     gates: Mapping[str, GateDecision] | None = None, description: str = "") -> dict[str, Any]:
    """Inside an active MLflow run: log the model as a pyfunc, register it, set aliases. A LoRA
    checkpoint (base by reference + adapter) is merged into a plain model first: the registered
    model must load anywhere, without the base model's cache."""
    import tempfile

    import mlflow

    import reset
    from reset.models import loading

    pkg = Path(reset.__file__).parent
    example, signature = _signature()
    with tempfile.TemporaryDirectory(prefix="reset-export-") as tmp:
        if loading.is_adapter_dir(model_dir):
            model_dir = loading.merge_to(model_dir, Path(tmp) / "merged")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(pkg / "serving" / "pyfunc_entry.py"),  # models-from-code: nothing is pickled
            model_config={"max_new_tokens": max_new_tokens, "system_prompt": system_prompt},
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(pkg)],
            pip_requirements=pip_requirements(),
            registered_model_name=cfg.model_name,
            signature=signature,
            input_example=example,
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for k, v in metrics.items():
        client.set_model_version_tag(cfg.model_name, version, METRIC_TAG + k, str(v))
    client.set_registered_model_alias(cfg.model_name, cfg.challenger_alias, version)
    if gates is None:
        decision = decide(client, cfg, metrics)
    else:
        champion = _champion_version(client, cfg)
        decision = {**gated_decision(cfg, gates, champion is not None), "champion_version": champion}
        for ref, g in gates.items():
            for k, v in g.tags(f"gate.vs_{ref}").items():
                client.set_model_version_tag(cfg.model_name, version, k, v)
    client.set_model_version_tag(cfg.model_name, version, "promotion", decision["reason"])
    if description:
        client.update_model_version(cfg.model_name, version, description=description)
    if decision["promote"]:
        client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, version)
    return {"model_name": cfg.model_name, "version": version, "model_uri": info.model_uri, **decision}


def _signature():
    """(input example, signature) of the pyfunc: a table of instruction (+ optional context) in,
    one string per row out."""
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame([{"instruction": "Who patented the telephone?",
                             "context": "The telephone was patented by Alexander Graham Bell."},
                            {"instruction": "Write a haiku about rain.", "context": None}])
    return example, infer_signature(example, ["Alexander Graham Bell patented it.", "Soft rain on the roof."])


def _champion_version(client, cfg: RegisterConfig) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(cfg.model_name, cfg.champion_alias).version)
    except MlflowException:
        return None


def decide(client, cfg: RegisterConfig, metrics: Mapping[str, float]) -> dict[str, Any]:
    """Promote when there is no champion, or when every primary axis is >= champion - tolerance."""
    from mlflow.exceptions import MlflowException

    try:
        champ = client.get_model_version_by_alias(cfg.model_name, cfg.champion_alias)
    except MlflowException:
        return {"promote": True, "reason": f"no {cfg.champion_alias} yet", "champion_version": None}
    worse = []
    for axis in PRIMARY:
        old = float(champ.tags.get(METRIC_TAG + axis, "nan"))
        new = float(metrics.get(axis, float("nan")))
        if not (new >= old - cfg.tolerance):  # also true for NaN: a missing metric never promotes
            worse.append(f"{axis} {new:.3f} < {old:.3f}")
    if worse:
        return {"promote": False, "reason": f"worse than champion v{champ.version}: " + "; ".join(worse),
                "champion_version": str(champ.version)}
    return {"promote": True, "reason": f"no worse than champion v{champ.version} on {', '.join(PRIMARY)}",
            "champion_version": str(champ.version)}
