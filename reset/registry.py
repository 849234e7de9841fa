"""Model registry: log the ReSet model, alias it `challenger`, and move `champion` to it only
when both axes of the paper (instruction following and faithfulness) are no worse than the
current champion's (within `tolerance`). The decision and its reason are tagged on the version.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reset.config import RegisterConfig
from reset.evaluation import PRIMARY

METRIC_TAG = "metric."


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "safetensors", "mlflow")]


def log_and_register(model_dir: str | os.PathLike[str], metrics: Mapping[str, float], cfg: RegisterConfig,
                     max_new_tokens: int = 64, system_prompt: str = "") -> dict[str, Any]:
    """Inside an active MLflow run: log the model as a pyfunc, register it, set aliases. A LoRA
    checkpoint (base by reference + adapter) is merged into a plain model first: the registered
    model must load anywhere, without the base model's cache."""
    import tempfile

    import mlflow

    import reset
    from reset.models import loading

    pkg = Path(reset.__file__).parent
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
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for k, v in metrics.items():
        client.set_model_version_tag(cfg.model_name, version, METRIC_TAG + k, str(v))
    client.set_registered_model_alias(cfg.model_name, cfg.challenger_alias, version)
    decision = decide(client, cfg, metrics)
    client.set_model_version_tag(cfg.model_name, version, "promotion", decision["reason"])
    if decision["promote"]:
        client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, version)
    return {"model_name": cfg.model_name, "version": version, "model_uri": info.model_uri, **decision}


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
