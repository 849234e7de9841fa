"""The run form: typed scalar parameters for what people change most between runs.

The Kubeflow UI shows a pipeline's parameters as a form; a dict parameter is a JSON box. The
values below are plain strings and numbers with defaults and descriptions; each one overrides one
key of a config section (the sections stay parameters too, for everything else). An empty string
leaves the section's value as it is.

`split_run_parameters(sections)` takes the scalars' values out of the sections (so each value is
shown, and set, in one place); `apply_run_parameters(sections, values)` puts them back when the run
starts (the `start-run` step), after which the steps see plain sections.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunParameter:
    name: str
    type: type
    path: tuple[str, ...]
    """Where it goes: (section, key[, subkey])."""
    description: str


RUN_PARAMETERS: tuple[RunParameter, ...] = (
    RunParameter("base_model", str, ("model", "base"),
                 "Base model: builtin:smollm2-135m-instruct, a local directory or an s3:// prefix holding a "
                 "Hugging Face model. Overrides model.base."),
    RunParameter("instruction_data", str, ("data", "instruction"),
                 "Instruction-following (IF) sources, comma-separated JSONL paths or s3:// URIs (empty = the "
                 "data section's). Overrides data.instruction."),
    RunParameter("grounded_data", str, ("data", "grounded"),
                 "Context-dependent (CD) sources, comma-separated JSONL paths or s3:// URIs (empty = the data "
                 "section's). Overrides data.grounded."),
    RunParameter("mode", str, ("select", "mode"),
                 "Reject sampling: reset (best candidate per prompt) or reset-s (a smaller, stricter set). "
                 "Overrides select.mode."),
    RunParameter("epochs", float, ("train", "epochs"),
                 "Epochs of the MTL fine-tuning (fractions allowed). Overrides train.epochs."),
    RunParameter("learning_rate", float, ("train", "learning_rate"),
                 "Peak learning rate of the MTL fine-tuning. Overrides train.learning_rate."),
    RunParameter("samples_per_setting", int, ("generate", "samples_per_setting"),
                 "Samples per seen prompt for each sampling setting of the decoding grid. Overrides "
                 "generate.samples_per_setting."),
    RunParameter("judge_endpoint", str, ("judge", "llm", "base_url"),
                 "OpenAI-compatible endpoint of the LLM judge, e.g. http://vllm.judges.svc:8000/v1 (no "
                 "credentials: the key comes from a Secret). Overrides judge.llm.base_url."),
    RunParameter("judge_model", str, ("judge", "llm", "model"),
                 "Model name the LLM judge asks the endpoint for. Overrides judge.llm.model."),
    RunParameter("registered_model_name", str, ("register", "model_name"),
                 "Registered model name in the MLflow model registry. Overrides register.model_name."),
)
NAMES = tuple(p.name for p in RUN_PARAMETERS)


def _get(d: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _pop(d: dict[str, Any], path: tuple[str, ...]) -> None:
    for k in path[:-1]:
        d = d.get(k)
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


def _sources_text(value: Any) -> str | None:
    """A source list as comma-separated paths, or None when it cannot be said that way (limits)."""
    from reset.config.sections import DataSource

    paths = []
    for src in value or []:
        src = DataSource.model_validate(src).model_dump()
        if src != DataSource(path=src["path"]).model_dump() or "," in src["path"]:
            return None  # per-source settings (limit, format, ...) stay in the data section
        paths.append(src["path"])
    return ",".join(paths)


def split_run_parameters(sections: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sections without the scalars' keys, the scalars' values) from full config sections."""
    rest = copy.deepcopy(dict(sections))
    values: dict[str, Any] = {}
    for p in RUN_PARAMETERS:
        value = _get(rest, p.path)
        if p.path[0] == "data":
            text = _sources_text(value)
            if text is None:  # keep the section's list (it has per-source limits)
                values[p.name] = ""
                continue
            value = text
        values[p.name] = p.type(value) if value is not None else ("" if p.type is str else p.type())
        _pop(rest, p.path)
    return rest, values


def apply_run_parameters(sections: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Sections with the scalars put in; an empty string leaves the section's value."""
    out = copy.deepcopy(dict(sections))
    for p in RUN_PARAMETERS:
        if p.name not in values:
            continue
        value = values[p.name]
        if isinstance(value, str) and not value.strip():
            continue
        if p.path[0] == "data":  # the pool sources; a frozen test source of the section stays
            kept = [src for src in _get(out, p.path) or [] if isinstance(src, Mapping) and src.get("split") == "test"]
            value = [s.strip() for s in str(value).split(",") if s.strip()] + kept
        d = out.setdefault(p.path[0], {})
        for k in p.path[1:-1]:
            d = d.setdefault(k, {})
        d[p.path[-1]] = value
    return out
