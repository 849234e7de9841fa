"""Generation: N samples per prompt over a decoding grid, through one seam with backends.

    generate(model_dir, examples, cfg, model_cfg) -> list[Candidate]

Backends, one module each: hf (batched transformers `generate`, the reference and the fallback).
Every backend writes the same candidate records: id `<example>/g<setting>s<sample>`, the
decoding settings, the seed and the backend that produced it.
"""

from reset.models.generation.hf import generate

__all__ = ["generate"]
