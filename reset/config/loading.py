"""Reading configs: YAML files, `--set section.key=value` overrides, one section as a step gets it,
and the JSON Schema. Every error is `ConfigError` naming the file (when known) and the key path:
`configs/x.yaml: train.learning_rate: Input should be greater than 0`.
"""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from reset.config.base import FieldError
from reset.config.sections import PipelineConfig

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A bad config value; the message names the file (when known) and the key path."""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key:
        return path
    if key.startswith("["):
        return f"{path}{key}"
    return f"{path}.{key}" if path else key


def _messages(exc: ValidationError, where: str) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        path = where
        for part in err["loc"]:
            if isinstance(part, str) and part.startswith("function-"):
                continue  # pydantic's name for a before-validator, not a key
            path = _join(path, part)
        msg = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            path, msg = _join(path, cause.key), str(cause)
        elif msg.startswith(("Value error, ", "Assertion failed, ")):
            msg = msg.split(", ", 1)[1]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        if "input" in err and err["type"] not in ("extra_forbidden", "missing") and not isinstance(cause, FieldError):
            value = err["input"]
            if isinstance(value, str | int | float | bool) and "credentials" not in msg and "NAME" not in msg \
                    and ", got" not in msg:
                msg = f"{msg}, got {value!r}"
        out.append(f"{path or 'config'}: {msg}")
    return out


def validate(cls: type[M], data: Any, where: str = "") -> M:
    """Build model `cls` from plain data; a ConfigError names every bad key (one per line)."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_messages(exc, where))) from None


def section(cls: type[M], data: Any, name: str) -> M:
    """Parse one section as a step receives it (a dict pipeline parameter); errors name `name.key`."""
    return validate(cls, data or {}, name)


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config file; `overrides` are `section.key=value` strings (value parsed as YAML).
    A file may start from another with `extends: other.yaml` (a path relative to it): the other
    file's sections are read first and this file's keys replace theirs, section by section and key
    by key (lists are replaced whole)."""
    path = os.fspath(path)
    raw = _read_raw(path, [])
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return validate(PipelineConfig, raw)
    except ConfigError as exc:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(exc).splitlines())) from None


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_raw(path: str, chain: list[str]) -> dict[str, Any]:
    """The raw mapping of a config file, with its `extends` chain merged in."""
    if os.path.abspath(path) in chain:
        raise ConfigError(f"{path}: extends itself ({' -> '.join(chain + [path])})")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...), got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends: expected the path of another config file, got {parent!r}")
    parent_path = os.path.join(os.path.dirname(os.path.abspath(path)), parent)
    return _merge(_read_raw(parent_path, chain + [os.path.abspath(path)]), raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `section.key=value` override to the raw mapping (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: {key.strip()!r} is not a key path like train.epochs")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {str(exc).splitlines()[0]}") from None
    node = raw
    for i, p in enumerate(parts[:-1]):
        if node.get(p) is None:  # absent, or present but empty (`train:`)
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {item!r}: {where} is a value, not a section (set {where}=... instead)")
    node[parts[-1]] = parsed


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain JSON-able data of a config model (what a pipeline parameter holds)."""
    return cfg.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a whole config file (for editors and docs)."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reset-kfp pipeline config"
    return schema


def write_schema(path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(json_schema(), fh, indent=2)
        fh.write("\n")
