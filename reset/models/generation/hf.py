"""The hf backend: batched transformers `generate` in this process (the reference and the fallback).

Requests are batched by prompt length (left padding) so a batch wastes little compute on pads.
Sampling is seeded per batch (torch.manual_seed with the batch's first request seed, which every
candidate of the batch records): reproducible for the same config, but a sample depends on its
batch, unlike the vllm backend's per-request seeds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from reset import progress, runtime
from reset.config import GenerateConfig, ModelConfig
from reset.data.chunks import ChunkStore
from reset.data.records import Example
from reset.models import chat, loading
from reset.models.generation.common import (
    Generation,
    Request,
    attach_prompts,
    candidates,
    chunk_name,
    chunk_order,
    plan,
    resumed_texts,
)


def generate(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    cfg: GenerateConfig,
    model_cfg: ModelConfig,
    *,
    model_name: str = "",
    log: Callable[[str], None] = print,
    offset: int = 0,
    store: ChunkStore | None = None,
) -> Generation:
    """Sample candidates for every example over `cfg.grid` with transformers (`offset`: see
    common.plan; hf seeds a batch, so a shard's samples match the unsharded run's only greedily).
    Chunk by chunk (common.chunk_name) into `store` when given, skipping the chunks it holds."""
    import torch

    runtime.set_torch_threads()
    t0 = time.monotonic()
    reqs = plan(examples, cfg, offset)
    names = [chunk_name(model_name, r, cfg) for r in reqs]
    texts: dict[int, list[str]] = resumed_texts(store, reqs, names, model_name)
    todo = {n: [i for i in idx if i not in texts] for n, idx in chunk_order(reqs, names).items()}
    todo = {n: idx for n, idx in todo.items() if idx}
    total = sum(r.n for r in reqs)
    done = sum(reqs[i].n for i in texts)
    tokens, cut, load_s = 0, 0, 0.0
    if todo:
        model, tok = loading.load(model_dir)
        model.eval()
        stops = chat.stop_token_ids(tok)
        cut = attach_prompts(reqs, tok, model_cfg)
        load_s = time.monotonic() - t0
    log(f"[generate:hf] {len(examples)} prompts x {len(cfg.grid)} settings -> {total} samples, batch {cfg.batch_size}"
        + (f"; {done} from chunks an earlier attempt finished" if done else ""))
    bar = progress.Progress(total, "samples", model_name)
    bar.update(done)
    t1 = time.monotonic()
    # Per chunk, batches of requests with one decoding setting, by prompt length; a request's n
    # samples are rows of the same batch, seeded per request.
    for name, chunk in todo.items():
        for si in range(len(cfg.grid)):
            group = sorted((i for i in chunk if reqs[i].setting_index == si),
                           key=lambda i: (len(reqs[i].prompt_ids), reqs[i].example.id))
            per_batch = max(1, cfg.batch_size // max(1, reqs[group[0]].n)) if group else 1
            for b in range(0, len(group), per_batch):
                idx = group[b : b + per_batch]
                out, n_tok = _sample(model, tok, [reqs[i] for i in idx], cfg.max_new_tokens, stops, torch)
                for i, samples in zip(idx, out, strict=True):
                    texts[i] = samples
                tokens += n_tok
                done += sum(reqs[i].n for i in idx)
                bar.update(done)
                el = time.monotonic() - t1
                log(f"[generate:hf] {done}/{total} samples, {done / el:.1f}/s, {tokens / el:.0f} tokens/s")
        if store is not None:
            store.write(name, [{"id": f"{model_name}\t{i}", "texts": texts[i], "seed": reqs[i].seed} for i in chunk])
    gen_s = time.monotonic() - t1
    cands = candidates(reqs, [texts[i] for i in range(len(reqs))], cfg, backend="hf", model_name=model_name,
                       order=examples)
    return Generation(cands, {"backend": "hf", "engine_start_s": load_s, "generate_s": gen_s, "output_tokens": tokens,
                              "tokens_per_s": tokens / gen_s if gen_s else 0.0, "prompts_cut": cut})


def _sample(
    model, tok, reqs: Sequence[Request], max_new_tokens: int, stops: list[int], torch
) -> tuple[list[list[str]], int]:
    """Generate each request's n samples; one generate call per request seed group (a batch)."""
    setting = reqs[0].setting
    width = max(len(r.prompt_ids) for r in reqs)
    pad = tok.pad_token_id
    rows, masks = [], []
    for r in reqs:
        for _ in range(r.n):
            rows.append([pad] * (width - len(r.prompt_ids)) + r.prompt_ids)
            masks.append([0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids))
    ids = torch.tensor(rows, device=model.device)
    mask = torch.tensor(masks, device=model.device)
    kwargs = {"do_sample": False}
    if setting.temperature > 0:
        kwargs = {"do_sample": True, "temperature": setting.temperature, "top_p": setting.top_p}
    for r in reqs[1:]:  # hf seeds a batch, not a request: record the seed that produced the samples
        r.seed = reqs[0].seed
    torch.manual_seed(reqs[0].seed)
    with torch.inference_mode():
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad,
            top_k=None,
            **kwargs,
        )
    new = gen[:, width:]
    n_tok = int(sum(int((row != pad).sum()) for row in new))
    decoded = tok.batch_decode(new, skip_special_tokens=True)
    out, k = [], 0
    for r in reqs:
        out.append(decoded[k : k + r.n])
        k += r.n
    return out, n_tok
