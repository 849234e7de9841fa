"""Chat formatting: an example as chat messages, the prompt text, SFT token ids with
response-only labels, and the token ids that end an assistant turn."""

from __future__ import annotations

from dataclasses import replace

from reset.data.records import Example
from reset.errors import ModelError

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (eos and ChatML's <|im_end|> where the vocab has it)."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def messages(example: Example, system_prompt: str = "") -> list[dict[str, str]]:
    """The chat messages for an example: the context as delimited data, then the instruction (so a
    prompt cut from the left to fit loses the start of the context, never the instruction)."""
    user = example.instruction.strip()
    if example.has_context:
        user = f"Context:\n\"\"\"\n{example.context.strip()}\n\"\"\"\n\n{user}"
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": user})
    return msgs


def prompt_text(tokenizer, example: Example, system_prompt: str = "") -> str:
    return tokenizer.apply_chat_template(messages(example, system_prompt), add_generation_prompt=True, tokenize=False)


# No tokenizer makes tokens longer than this many characters on average over a long text: cutting a
# text to budget x this before tokenizing it keeps every token that can survive the cut, and a huge
# row can never be tokenized (and padded) in full.
CHARS_PER_TOKEN_BOUND = 16


def bounded(example: Example, max_tokens: int) -> tuple[Example, bool]:
    """The example with its instruction and context cut (by characters) to what `max_tokens`
    tokens can hold: the context keeps its end (it is cut from the left, like the prompt), the
    instruction its start. Returns (example, whether anything was cut)."""
    limit = max(1, max_tokens) * CHARS_PER_TOKEN_BOUND
    instruction, context = example.instruction, example.context
    cut = False
    if len(instruction) > limit:
        instruction, cut = instruction[:limit], True
    if context is not None and len(context) > limit:
        context, cut = context[-limit:], True
    if not cut:
        return example, False
    return replace(example, instruction=instruction, context=context), True


def prompt_ids(tokenizer, example: Example, max_prompt_length: int, system_prompt: str = "") -> tuple[list[int], bool]:
    """The prompt's token ids for generation, cut from the left to `max_prompt_length` (the end of
    the instruction and the generation prompt survive), and whether it was cut. Every generation
    backend gets these same ids, so backends see identical prompts."""
    ex, cut = bounded(example, max_prompt_length)
    ids = tokenizer(prompt_text(tokenizer, ex, system_prompt), add_special_tokens=False)["input_ids"]
    if len(ids) > max_prompt_length:
        return ids[len(ids) - max_prompt_length :], True
    return ids, cut


def encode_sft(tokenizer, example: Example, response: str, max_length: int, system_prompt: str = ""):
    """Token ids and labels for one SFT example: loss on the response tokens only.

    When too long, the prompt is cut from the left (the instruction's end and the generation prompt
    survive), then the response from the right. Huge texts are cut by characters first."""
    example, _ = bounded(example, max_length)
    response = response[: max(1, max_length) * CHARS_PER_TOKEN_BOUND]
    msgs = messages(example, system_prompt)
    prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt):
        raise ModelError("the chat template does not render the prompt as a prefix of the full conversation")
    completion = full[len(prompt) :].rstrip("\n")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if len(p_ids) + len(c_ids) > max_length:
        c_ids = c_ids[: max(max_length - len(p_ids), max_length // 2)]
        p_ids = p_ids[len(p_ids) - (max_length - len(c_ids)) :]
    ids = p_ids + c_ids
    labels = [-100] * len(p_ids) + c_ids
    return ids, labels
