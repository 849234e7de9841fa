"""Self-Instruct: its fine-tuning JSONL of {prompt, completion} (gpt3_finetuning_data_*.jsonl),
or its instance file of {instruction, input, output}.

A prompt is one of Self-Instruct's templates around an instruction and an optional input:
"Task: " in front and "Output:" at the end are removed, the completion's trailing
"<|endoftext|>" too. An input marked "Input:" is split off; otherwise, since Self-Instruct's
instructions are one line, any further lines of the prompt are its input. An input is the
example's context (the paper removes IF examples that carry one)."""

from __future__ import annotations

import re
from typing import Any

from reset.data.sources.base import Converted, Ctx, example, stable_id, text

NAME = "self-instruct"
LABEL = "self-instruct"
SLOT = "instruction"
KNOWN = frozenset({"prompt", "completion", "instruction", "input", "output"})
_INPUT = re.compile(r"\n\s*Input\s*:\s*", re.IGNORECASE)
_OUTPUT = re.compile(r"\s*Output\s*:\s*$", re.IGNORECASE)


def matches(row: dict[str, Any]) -> bool:
    return "prompt" in row and "completion" in row


def split_prompt(prompt: str) -> tuple[str, str]:
    """(instruction, input) of a Self-Instruct prompt."""
    p = _OUTPUT.sub("", prompt.strip())
    p = re.sub(r"^\s*Task\s*:\s*", "", p, flags=re.IGNORECASE).strip()
    m = _INPUT.search(p)
    if m:
        return p[: m.start()].strip(), p[m.end():].strip()
    first, _, rest = p.partition("\n")
    return first.strip(), rest.strip()


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    if "prompt" in row:
        instruction, context = split_prompt(text(row, "prompt"))
        response = text(row, "completion").strip()
        response = response.removesuffix("<|endoftext|>").strip()
    else:
        instruction, context = text(row, "instruction"), text(row, "input", required=False)
        response = text(row, "output")
    if not instruction:
        raise ValueError("field 'prompt': no instruction left after removing the template")
    ex = example(ctx, id=stable_id(ctx.source, instruction, context, response), instruction=instruction,
                 response=response, context=context)
    return [Converted(ex, None)]
