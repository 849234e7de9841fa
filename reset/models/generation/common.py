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
from reset.data.records import Candidate, Example
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
            reqs.append(Request(ex, si, setting, n, request_seed(cfg.seed, si, offset + i)))
    return reqs


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
