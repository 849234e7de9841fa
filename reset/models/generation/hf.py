"""Self-instruct generation: N samples per seen prompt over a decoding grid, batched and seeded.

Each candidate records the decoding settings and the seed that produced it. Greedy settings
(temperature 0) yield one sample per prompt; sampling settings yield `samples_per_setting`.
Prompts are batched by length (left padding) so a batch wastes little compute on pads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reset import progress, runtime
from reset.config import DecodingSetting, GenerateConfig, ModelConfig
from reset.data.records import Candidate, Example
from reset.models import chat, loading


@dataclass
class _Job:
    example: Example
    setting_index: int
    sample_index: int


def generate(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    cfg: GenerateConfig,
    model_cfg: ModelConfig,
    *,
    model_name: str = "",
    log: Callable[[str], None] = print,
) -> list[Candidate]:
    """Sample candidates for every example over `cfg.grid`; returns them in example order."""

    runtime.set_torch_threads()
    model, tok = loading.load(model_dir)
    model.eval()
    tok.padding_side = "left"
    stops = chat.stop_token_ids(tok)
    prompts = {ex.id: chat.prompt_text(tok, ex, model_cfg.system_prompt) for ex in examples}
    lengths = {k: len(tok(v, add_special_tokens=False)["input_ids"]) for k, v in prompts.items()}

    jobs: list[_Job] = []
    for si, setting in enumerate(cfg.grid):
        n = 1 if setting.temperature == 0 else cfg.samples_per_setting
        for ex in examples:
            jobs.extend(_Job(ex, si, k) for k in range(n))
    total = len(jobs)
    log(f"[generate] {len(examples)} prompts x {len(cfg.grid)} settings -> {total} samples, batch {cfg.batch_size}")

    out: dict[str, Candidate] = {}
    bar = progress.Progress(total, "samples", model_name)
    done = 0
    t0 = time.time()
    for si, setting in enumerate(cfg.grid):
        group = sorted((j for j in jobs if j.setting_index == si), key=lambda j: (lengths[j.example.id], j.example.id))
        for b in range(0, len(group), cfg.batch_size):
            batch = group[b : b + cfg.batch_size]
            seed = _seed(cfg.seed, si, b // cfg.batch_size)
            texts = _sample(model, tok, [prompts[j.example.id] for j in batch], setting, cfg.max_new_tokens,
                            model_cfg.max_prompt_length, stops, seed)
            for j, text in zip(batch, texts, strict=True):
                cid = f"{j.example.id}/g{j.setting_index}s{j.sample_index}"
                out[cid] = Candidate(
                    id=cid,
                    example_id=j.example.id,
                    text=text,
                    decoding={
                        "strategy": "greedy" if setting.temperature == 0 else "sample",
                        "temperature": setting.temperature,
                        "top_p": setting.top_p,
                        "seed": seed,
                        "max_new_tokens": cfg.max_new_tokens,
                    },
                    model=model_name,
                )
            done += len(batch)
            bar.update(done)
            el = time.time() - t0
            log(f"[generate] {done}/{total} samples, {done / el:.1f}/s, eta {el / done * (total - done):.0f}s")
    order = {ex.id: i for i, ex in enumerate(examples)}
    return sorted(out.values(), key=lambda c: (order[c.example_id], c.id))


def _seed(base: int, setting: int, batch: int) -> int:
    return (base * 1_000_003 + setting * 10_007 + batch) % (2**31)


def _sample(model, tok, prompts: list[str], setting: DecodingSetting, max_new_tokens: int, max_prompt: int,
            stops: list[int], seed: int) -> list[str]:
    import torch

    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] > max_prompt:  # keep the end of the prompt (instruction + generation prompt)
        ids, mask = ids[:, -max_prompt:], mask[:, -max_prompt:]
    ids, mask = ids.to(model.device), mask.to(model.device)
    kwargs = {"do_sample": False}
    if setting.temperature > 0:
        kwargs = {"do_sample": True, "temperature": setting.temperature, "top_p": setting.top_p}
    torch.manual_seed(seed)
    with torch.inference_mode():
        gen = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=stops,
            pad_token_id=tok.pad_token_id, top_k=None, **kwargs,
        )
    return [t.strip() for t in tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)]
