"""A model's tokenizer alone, and lengths in its tokens through the chat template (the data card's
length meter): without loading the weights, and for an s3:// model without downloading them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from reset.config import ModelConfig
from reset.data.records import Example
from reset.models import chat
from reset.models.loading import TOKENIZER_FILES, load_tokenizer, resolve_model


def tokenizer_of(ref: str, cache_dir: str = ""):
    """The tokenizer of model `ref` alone: an s3:// model's tokenizer files are fetched without its
    weights; builtin and local models are resolved as the other steps resolve them."""
    from reset.data import storage

    if not storage.is_s3(ref):
        return load_tokenizer(resolve_model(ref, cache_dir))
    base = Path(cache_dir or storage.default_cache_dir())
    local = Path(tempfile.mkdtemp(prefix="tokenizer-", dir=base if base.exists() else None))
    found, first_error = [], ""
    for name in (*TOKENIZER_FILES, "config.json"):
        try:
            path = storage.fetch(f"{ref.rstrip('/')}/{name}", base / "s3")
        except Exception as exc:  # noqa: BLE001 - a tokenizer has some of these files, never all
            first_error = first_error or str(exc)
            continue
        shutil.copy(path, local / name)
        found.append(name)
    if not any(n != "config.json" for n in found):
        raise FileNotFoundError(f"no tokenizer files under {ref} ({first_error})")
    return load_tokenizer(local)


def length_meter(mcfg: ModelConfig, cache_dir: str = ""):
    """Lengths in tokens of the base model's tokenizer, through the chat template the training
    and generation steps use; whitespace words, with the reason, where it cannot be loaded."""
    from reset.data.card import LengthMeter, whitespace_meter

    try:
        tok = tokenizer_of(mcfg.base, mcfg.cache_dir or cache_dir)
    except Exception as exc:  # noqa: BLE001 - any failure means: count words, and say why
        return whitespace_meter(mcfg.max_length, mcfg.max_prompt_length, f"{type(exc).__name__}: {exc}"[:300])
    system = mcfg.system_prompt
    cut = 64 * max(mcfg.max_length, mcfg.max_prompt_length)  # characters; bounds the tokenizer's work

    def bounded(ex: Example) -> Example:
        return Example(ex.id, ex.source, ex.kind, ex.instruction[:cut], ex.response[:cut],
                       ex.context[-cut:] if ex.context else None, ex.task)

    def render_each(ex: Example) -> tuple[str, str]:
        msgs = chat.messages(bounded(ex), system)
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": ex.response[:cut]}], tokenize=False)
        return prompt, full[len(prompt):].rstrip("\n") if full.startswith(prompt) else ex.response[:cut]

    # Templates put the user's text and the response in as they are: render once around markers and
    # fill them in (about 100x faster than a Jinja rendering per example); probes check that this
    # gives the same text as rendering each, else each is rendered.
    user_mark, reply_mark = "\x00USER\x00", "\x00REPLY\x00"
    head = [{"role": "system", "content": system}] if system else []
    p_tpl = tok.apply_chat_template(head + [{"role": "user", "content": user_mark}], add_generation_prompt=True,
                                    tokenize=False)
    f_tpl = tok.apply_chat_template(head + [{"role": "user", "content": user_mark},
                                            {"role": "assistant", "content": reply_mark}], tokenize=False)
    parts = None
    if p_tpl.count(user_mark) == 1 and f_tpl.startswith(p_tpl) and f_tpl[len(p_tpl):].count(reply_mark) == 1:
        parts = (*p_tpl.split(user_mark), *f_tpl[len(p_tpl):].split(reply_mark))

    def render_fast(ex: Example) -> tuple[str, str]:
        b = bounded(ex)
        user = chat.messages(b, "")[-1]["content"]
        return parts[0] + user + parts[1], (parts[2] + b.response + parts[3]).rstrip("\n")

    probes = [Example("p", "p", "grounded", "Name the city.  ", " It is Oslo. ", "Ann lives in Oslo.\n", "extractive"),
              Example("q", "q", "instruction", "Write one line.", "A line.", None)]
    render = render_fast if parts and all(render_fast(e) == render_each(e) for e in probes) else render_each

    def measure(examples):
        out = []
        for start in range(0, len(examples), 256):  # bounded batches: the tokenizer's buffers stay small
            pairs = [render(ex) for ex in examples[start:start + 256]]
            p = tok([a for a, _ in pairs], add_special_tokens=False)["input_ids"]
            c = tok([b for _, b in pairs], add_special_tokens=False)["input_ids"]
            out += [(len(x), len(x) + len(y)) for x, y in zip(p, c, strict=True)]
        return out

    probe = Example("x", "x", "grounded", "x", "z", "y", "extractive")
    prompt, completion = render(probe)
    overhead = len((prompt + completion).encode("utf-8")) - 3
    return LengthMeter("tokens", f"the tokenizer of {mcfg.base} (chat template included)", measure,
                       mcfg.max_length, mcfg.max_prompt_length, overhead)
