"""Generation: N samples per prompt over a decoding grid, through one seam with two backends.

    run(model_dir, examples, cfg, model_cfg) -> Generation(candidates, stats)
    generate(...)                            -> list[Candidate]   (the same, candidates only)
    run_many({name: model_dir}, examples, cfg, model_cfg) -> {name: Generation}
        several models on the same prompts (evaluation): with vllm, the models that share a base
        (LoRA adapters) share one engine and one batch

Backends, one module each, chosen by `generate.backend` (`evaluate.backend` for evaluation):
  vllm  vLLM's offline engine: in this process where vllm is importable (the CUDA image), else
        in a worker process of vLLM's own environment (`.venv-vllm` on a CPU machine);
  hf    batched transformers `generate` in this process: the reference and the fallback.
`auto` (the default) takes vllm where it can run, else hf, and says which and why. Both
backends get the same prompt token ids (reset.models.chat.prompt_ids) and write the same
candidate records: id `<example>/g<setting>s<sample>`, the decoding settings, the seed and the
backend (common.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reset.config import GenerateConfig, ModelConfig
from reset.data.chunks import Resume
from reset.data.records import Candidate, Example
from reset.errors import ModelError
from reset.models.generation import hf
from reset.models.generation import vllm_backend as vllm
from reset.models.generation.common import Generation, generation_inputs

__all__ = ["Generation", "choose_backend", "generate", "run", "run_many", "sample_candidates"]


def choose_backend(cfg: GenerateConfig) -> tuple[str, str]:
    """(backend, why) for this config on this machine."""
    if cfg.backend == "hf":
        return "hf", "generate.backend is hf"
    ok, how = vllm.available(cfg)
    if cfg.backend == "vllm":
        if not ok:
            raise vllm.VLLMUnavailable(f"generate.backend is vllm but {how}")
        return "vllm", how
    return ("vllm", how) if ok else ("hf", how)


def run(model_dir: str | os.PathLike[str], examples: Sequence[Example], cfg: GenerateConfig, model_cfg: ModelConfig,
        *, model_name: str = "", log: Callable[[str], None] = print, offset: int = 0,
        resume: Resume | None = None) -> Generation:
    """Generate with the backend `cfg.backend` picks; with `auto`, a vLLM failure falls back to hf
    and says why (the stats record it). `offset`: the position of examples[0] in the whole prompt
    set when this is one shard of it (the seeds follow the whole set). `resume`: the step's chunk
    stores (reset.data.chunks): the samples are saved chunk by chunk as they are made, and the
    chunks an earlier attempt with the same inputs finished are reused."""
    backend, why = choose_backend(cfg)

    def store(b: str):
        inputs = generation_inputs(str(model_dir), examples, cfg, model_cfg, b, offset)
        return resume.store({**inputs, "model_name": model_name}, what=model_name) if resume else None

    if backend == "hf":
        if cfg.backend == "auto":
            log(f"[generate] note: using transformers (hf), not vLLM: {why}")
        return hf.generate(model_dir, examples, cfg, model_cfg, model_name=model_name, log=log, offset=offset,
                           store=store("hf"))
    try:
        return vllm.generate(model_dir, examples, cfg, model_cfg, model_name=model_name, log=log, offset=offset,
                             store=store("vllm"))
    except (ModelError, vllm.VLLMUnavailable) as exc:
        if cfg.backend != "auto":
            raise
        log(f"[generate] note: vLLM failed, falling back to transformers (hf): {str(exc).splitlines()[0]}")
        result = hf.generate(model_dir, examples, cfg, model_cfg, model_name=model_name, log=log, offset=offset,
                             store=store("hf"))
        result.stats["fallback_reason"] = str(exc).splitlines()[0][:300]
        return result


def generate(model_dir: str | os.PathLike[str], examples: Sequence[Example], cfg: GenerateConfig,
             model_cfg: ModelConfig, *, model_name: str = "", log: Callable[[str], None] = print) -> list[Candidate]:
    return run(model_dir, examples, cfg, model_cfg, model_name=model_name, log=log).candidates


def sample_candidates(model_dir: str | os.PathLike[str], examples: Sequence[Example], cfg: GenerateConfig,
                      model_cfg: ModelConfig, *, log: Callable[[str], None] = print, offset: int = 0,
                      resume: Resume | None = None) -> tuple[list[Candidate], dict[str, Any]]:
    """The generate step's work: `run` for the seen prompts, plus each prompt's reference as a
    candidate when generate.include_reference, and what it measured (the step's metrics)."""
    import time

    from reset.data.shards import ordered

    t0 = time.time()
    result = run(model_dir, examples, cfg, model_cfg, model_name="mtl", log=log, offset=offset, resume=resume)
    cands = result.candidates
    if cfg.include_reference:
        cands += [Candidate(id=f"{e.id}/ref", example_id=e.id, text=e.response, decoding={"strategy": "reference"},
                            model="reference", is_reference=True) for e in examples]
        cands = ordered(cands, [e.id for e in examples], lambda c: c.example_id, lambda c: c.id)
    secs = time.time() - t0
    gen = result.stats
    record_phases(gen)
    stats = {"prompts": len(examples), "candidates": len(cands), "seconds": secs,
             "samples_per_second": len(cands) / secs if secs else 0.0,
             "empty_candidates": sum(1 for c in cands if not c.text.strip()),
             "engine_start_seconds": gen.get("engine_start_s", 0.0), "generate_seconds": gen.get("generate_s", 0.0),
             "output_tokens": gen.get("output_tokens", 0), "tokens_per_second": gen.get("tokens_per_s", 0.0),
             "prompts_cut": gen.get("prompts_cut", 0), "backend": gen.get("backend", ""),
             **({"fallback_reason": gen["fallback_reason"]} if "fallback_reason" in gen else {})}
    return cands, stats


def record_phases(stats: Mapping[str, Any]) -> None:
    """The engine's start and its sampling as phases of the running step (reset.progress)."""
    from reset import progress

    progress.add_phase("engine_start", float(stats.get("engine_start_s", 0.0)))
    progress.add_phase("compute", float(stats.get("generate_s", 0.0)))
    if stats.get("load_s"):
        progress.add_phase("model_load", float(stats["load_s"]))


def record_phases_of_many(stats: Sequence[Mapping[str, Any]]) -> None:
    """The phases of several models' generation in one step (evaluate): each model's sampling and
    weight swaps add up; an engine that served them all (vLLM: models_in_engine > 1) started once,
    separate engines (transformers: one load per model) each count."""
    from reset import progress

    if not stats:
        return
    shared = all(int(s.get("models_in_engine", 1)) > 1 for s in stats)
    starts = [float(s.get("engine_start_s", 0.0)) for s in stats]
    progress.add_phase("engine_start", max(starts) if shared else sum(starts))
    progress.add_phase("compute", sum(float(s.get("generate_s", 0.0)) for s in stats))
    load = sum(float(s.get("load_s", 0.0)) + float(s.get("reload_s", 0.0)) for s in stats)
    if load:
        progress.add_phase("model_load", load)


def run_many(models: Mapping[str, str | os.PathLike[str]], examples: Sequence[Example], cfg: GenerateConfig,
             model_cfg: ModelConfig, *, log: Callable[[str], None] = print, offset: int = 0,
             resume: Resume | None = None) -> dict[str, Generation]:
    """Generate for several models (name -> checkpoint) on the same examples, as `run` would for
    each; vllm serves the models that share a base model from one engine. `resume`: as in `run`
    (one store for all the models, a chunk per model and piece of the prompts)."""
    backend, why = choose_backend(cfg)

    def store(b: str):
        if resume is None:
            return None
        inputs = {name: generation_inputs(str(path), examples, cfg, model_cfg, b, offset)
                  for name, path in models.items()}
        return resume.store({"models": inputs}, what=", ".join(models))

    if backend == "vllm":
        try:
            return vllm.generate_many(models, examples, cfg, model_cfg, log=log, offset=offset, store=store("vllm"))
        except (ModelError, vllm.VLLMUnavailable) as exc:
            if cfg.backend != "auto":
                raise
            log(f"[generate] note: vLLM failed, falling back to transformers (hf): {str(exc).splitlines()[0]}")
    elif cfg.backend == "auto":
        log(f"[generate] note: using transformers (hf), not vLLM: {why}")
    hf_store = store("hf")
    return {name: hf.generate(path, examples, cfg, model_cfg, model_name=name, log=log, offset=offset, store=hf_store)
            for name, path in models.items()}
