"""What every generation backend shares: the sampling plan, the seeds, the prompts' token ids,
and the candidate records they write.

A plan has one request per (example, decoding setting): greedy settings ask for one sample,
sampling settings for `samples_per_setting`. Each request has its own seed, derived from
`generate.seed`, the setting's index and the example's position, so a sample does not depend on
which other prompts share its batch. Candidate ids are `<example id>/g<setting>s<sample>`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reset.config import DecodingSetting, GenerateConfig, ModelConfig
from reset.data.chunks import chunk_of, digest, path_digest
from reset.data.records import Candidate, Example, to_row
from reset.models import chat


@dataclass
class Request:
    """One (example, decoding setting) pair: `n` samples of the same prompt."""

    example: Example
    setting_index: int
    setting: DecodingSetting
    n: int
    seed: int
    prompt_ids: list[int] = field(default_factory=list)
    position: int = 0  # the example's position among the examples planned


@dataclass
class Generation:
    """A backend's result: the candidates in example order and what it measured."""

    candidates: list[Candidate]
    stats: dict[str, Any] = field(default_factory=dict)


def request_seed(base: int, setting_index: int, example_index: int) -> int:
    """A stable 31-bit seed per (base seed, setting, example position)."""
    blob = f"{base}:{setting_index}:{example_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def plan(examples: Sequence[Example], cfg: GenerateConfig, offset: int = 0) -> list[Request]:
    """The requests for `examples`; `offset` is the position of examples[0] in the whole prompt
    set when this is one shard of it, so each request gets the seed the unsharded run gives it."""
    reqs = []
    for si, setting in enumerate(cfg.grid):
        n = 1 if setting.temperature == 0 else cfg.samples_per_setting
        for i, ex in enumerate(examples):
            reqs.append(Request(ex, si, setting, n, request_seed(cfg.seed, si, offset + i), position=i))
    return reqs


def chunk_name(model_name: str, req: Request, cfg: GenerateConfig) -> str:
    """The chunk of the step's results a request's samples belong to (reset.data.chunks): every
    request of `generate.chunk_prompts` consecutive prompts, per model."""
    return f"{model_name or 'model'}.{chunk_of(req.position, cfg.chunk_prompts):05d}"


def chunk_order(reqs: Sequence[Request], names: Sequence[str]) -> dict[str, list[int]]:
    """chunk name -> the positions of its requests in `reqs`, chunks in the order they are made."""
    out: dict[str, list[int]] = {}
    for i in sorted(range(len(reqs)), key=lambda i: (names[i], i)):
        out.setdefault(names[i], []).append(i)
    return out


def resumed_texts(store, reqs: Sequence[Request], names: Sequence[str], key: str) -> dict[int, list[str]]:
    """The samples of every request whose chunk an earlier attempt finished (rows `{"id":
    "<key>\t<i>", "texts": [...], "seed": s}`); their recorded seed is put back on the request."""
    out: dict[int, list[str]] = {}
    if store is None:
        return out
    for name in sorted(set(names) & store.done):
        for row in store.read(name):
            head, _, i = row["id"].rpartition("\t")
            if head != key:
                continue
            out[int(i)] = list(row["texts"])
            if "seed" in row:
                reqs[int(i)].seed = int(row["seed"])
    return out


def generation_inputs(model: str, examples: Sequence[Example], cfg: GenerateConfig, model_cfg: ModelConfig,
                      backend: str, offset: int) -> dict[str, Any]:
    """What a generation's results depend on (reset.data.chunks fingerprints it): the model's
    files, the prompts, the decoding settings and seeds, how prompts are built, the backend."""
    decoding = cfg.model_dump(mode="json", exclude={"vllm_engine_server", "vllm_engine_keep_s"})
    return {"model": path_digest(model) if not str(model).startswith(("builtin:", "s3://")) else str(model),
            "prompts": digest([to_row(e) for e in examples]), "offset": offset, "decoding": decoding,
            "prompting": {"max_prompt_length": model_cfg.max_prompt_length, "system_prompt": model_cfg.system_prompt},
            "backend": backend}


def attach_prompts(reqs: Sequence[Request], tokenizer, model_cfg: ModelConfig) -> int:
    """Fill each request's prompt token ids (the same for every backend); returns how many
    prompts were cut to model.max_prompt_length."""
    cache: dict[str, tuple[list[int], bool]] = {}
    cut = 0
    for r in reqs:
        if r.example.id not in cache:
            cache[r.example.id] = chat.prompt_ids(tokenizer, r.example, model_cfg.max_prompt_length,
                                                  model_cfg.system_prompt)
            cut += cache[r.example.id][1]
        r.prompt_ids = cache[r.example.id][0]
    return cut


def candidates(reqs: Sequence[Request], texts: Sequence[Sequence[str]], cfg: GenerateConfig, *, backend: str,
               model_name: str, order: Sequence[Example]) -> list[Candidate]:
    """Candidate records for `texts[i]` (the samples of `reqs[i]`), sorted by example order, then id."""
    out = []
    for r, samples in zip(reqs, texts, strict=True):
        if len(samples) != r.n:
            raise RuntimeError(f"{backend}: {len(samples)} samples for {r.example.id} setting {r.setting_index}, "
                               f"expected {r.n}")
        for k, text in enumerate(samples):
            out.append(Candidate(
                id=f"{r.example.id}/g{r.setting_index}s{k}",
                example_id=r.example.id,
                text=text.strip(),
                decoding={
                    "strategy": "greedy" if r.setting.temperature == 0 else "sample",
                    "temperature": r.setting.temperature,
                    "top_p": r.setting.top_p,
                    "seed": r.seed,
                    "sample": k,
                    "max_new_tokens": cfg.max_new_tokens,
                    "backend": backend,
                },
                model=model_name,
            ))
    pos = {ex.id: i for i, ex in enumerate(order)}
    return sorted(out, key=lambda c: (pos[c.example_id], c.id))
