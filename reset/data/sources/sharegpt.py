"""ShareGPT: conversations of {from, value} turns (`conversations`; `messages` of {role,
content} is read the same way), one conversation per array element or JSONL row.

Which turns become examples (DataSource `turns`):
- a human turn (from human / user) immediately followed by an assistant turn (gpt / chatgpt /
  assistant / bard / bing / model) is one (instruction, response) pair;
- `first` (default): only a conversation's first pair, the one that stands on its own;
- `all`: every pair, each as a separate example without the turns before it (use it only where
  later turns make sense alone);
- a leading system turn goes to meta["system"]; turns before the first human turn (a
  conversation that starts with the assistant) are skipped; a human turn with no answer
  (followed by another human turn, or last) is skipped; a pair with an empty side is skipped.
  Each of these is counted in the data card's notes;
- a conversation with no pair at all is excluded (quarantined with the reason).
Ids: `<conversation id>#<pair number>`, or a content hash where the conversation has no id."""

from __future__ import annotations

from typing import Any

from reset.data.sources.base import Converted, Ctx, example, stable_id

NAME = "sharegpt"
LABEL = "sharegpt"
SLOT = "instruction"
KNOWN = frozenset({"id", "conversations", "messages"})
HUMAN = frozenset({"human", "user"})
ASSISTANT = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing", "model"})
SYSTEM = frozenset({"system"})


def matches(row: dict[str, Any]) -> bool:
    turns = row.get("conversations", row.get("messages"))
    return isinstance(turns, list) and (not turns or isinstance(turns[0], dict))


def _turns(row: dict[str, Any]) -> list[tuple[str, str]]:
    key = "conversations" if "conversations" in row else "messages"
    turns = row.get(key)
    if not isinstance(turns, list):
        raise ValueError(f"field {key!r}: expected a list of turns")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise ValueError(f"field '{key}[{i}]': expected an object with from/value")
        role = t.get("from", t.get("role"))
        value = t.get("value", t.get("content"))
        if not isinstance(role, str) or not isinstance(value, str | type(None)):
            raise ValueError(f"field '{key}[{i}]': needs a string 'from' (or 'role') and 'value' (or 'content')")
        out.append((role.strip().lower(), value or ""))
    return out


def convert(row: dict[str, Any], ctx: Ctx) -> list[Converted]:
    turns = _turns(row)
    conv = row.get("id")
    conv = str(conv) if isinstance(conv, str | int) and not isinstance(conv, bool) and str(conv) else ""
    system = ""
    i = 0
    while i < len(turns) and turns[i][0] in SYSTEM:
        system = system or turns[i][1]
        i += 1
    lead = 0
    while i < len(turns) and turns[i][0] not in HUMAN:
        lead += 1
        i += 1
    if lead:
        ctx.note("sharegpt: turns before the first human turn skipped", lead)
    out: list[Converted] = []
    pair = 0
    while i < len(turns):
        role, value = turns[i]
        if role not in HUMAN:
            i += 1
            continue
        if i + 1 >= len(turns) or turns[i + 1][0] not in ASSISTANT:
            ctx.note("sharegpt: human turns without an answer skipped")
            i += 1
            continue
        answer = turns[i + 1][1]
        i += 2
        if not value.strip() or not answer.strip():
            ctx.note("sharegpt: pairs with an empty turn skipped")
            continue
        ex_id = f"{conv}#{pair}" if conv else stable_id(ctx.source, value, answer)
        meta: dict[str, Any] = {"turn": pair}
        if conv:
            meta["conversation"] = conv
        if system:
            meta["system"] = system
        out.append(Converted(example(ctx, id=ex_id, instruction=value, response=answer, meta=meta), None))
        pair += 1
        if ctx.turns == "first":
            break
    if not out:
        from reset.data.sources.base import Excluded

        raise Excluded("sharegpt: no human turn followed by an assistant turn")
    return out
