"""Fixture files in each published data format, written by the project (nothing downloaded), with
the messy rows real files have: Alpaca's empty `input`, ShareGPT conversations that start with
the assistant, Natural Questions without a short answer, Dolly rows with a context in an IF
category, very long CNN articles; and BOM, CRLF, a non-UTF-8 byte, NUL, deep nesting, a JSON array
in a .jsonl file.

Every row is written together with what the loaders must do with it (`Expect`): kept, excluded
(a rule of the recipe), invalid or too-large, with a word its reason must contain. Tests compare
what the loaders did against these, row by row.

    python -m tests.data_fixtures OUT_DIR     # write them (to look at, or to try `data check`)
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

WORDS = [
    "river",
    "market",
    "garden",
    "engine",
    "winter",
    "harbor",
    "signal",
    "copper",
    "meadow",
    "lantern",
    "orbit",
    "canyon",
    "violet",
    "thunder",
    "pepper",
    "saddle",
    "marble",
    "island",
    "rocket",
    "velvet",
    "anchor",
    "bishop",
    "candle",
    "dragon",
    "ember",
    "falcon",
    "glacier",
    "hammer",
    "jungle",
    "kettle",
    "ladder",
    "magnet",
    "nectar",
    "oyster",
    "pilot",
    "quartz",
    "raven",
    "silver",
    "tunnel",
    "umbrella",
    "vessel",
    "walnut",
    "yellow",
    "zebra",
    "acorn",
    "bamboo",
    "cactus",
    "dolphin",
    "eagle",
    "fossil",
    "ginger",
    "hazel",
    "iris",
    "jasmine",
    "koala",
    "lemon",
    "mango",
    "nutmeg",
    "olive",
    "panda",
    "quill",
    "rose",
    "sparrow",
    "tulip",
    "urchin",
    "vanilla",
    "willow",
    "yarn",
    "zinnia",
    "atlas",
    "beacon",
    "cedar",
    "delta",
    "echo",
    "fjord",
    "grove",
    "helium",
    "indigo",
    "jade",
    "kayak",
    "lotus",
    "maple",
    "nova",
    "onyx",
    "prism",
    "quasar",
    "ridge",
    "summit",
    "tide",
    "umber",
    "vortex",
    "wharf",
    "xenon",
    "yonder",
    "zephyr",
]
BAD_BYTE = b"caf\xe9"  # latin-1, not UTF-8


@dataclass
class Expect:
    line: int
    outcome: str  # kept | excluded | invalid | too-large
    words: str = ""  # a word the reason must contain (not kept), or the example's id (kept, optional)
    examples: int = 1  # examples a kept row makes


@dataclass
class Fixture:
    path: Path
    format: str
    slot: str
    expect: list[Expect] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for e in self.expect if e.outcome == outcome)

    @property
    def kept_examples(self) -> int:
        return sum(e.examples for e in self.expect if e.outcome == "kept")


def _sentence(rng: random.Random, n: int) -> str:
    words = rng.sample(WORDS, n)
    return (" ".join(words)).capitalize() + "."


# ------------------------------------------------------------------------------------ writers
def _jsonl(
    path: Path, rows: list[tuple[bytes | dict, Expect]], *, bom: bool = False, crlf: bool = False, gz: bool = False
) -> list[Expect]:
    end = b"\r\n" if crlf else b"\n"
    out, expects = [], []
    for i, (row, exp) in enumerate(rows, start=1):
        data = row if isinstance(row, bytes) else json.dumps(row, ensure_ascii=False).encode()
        out.append((b"\xef\xbb\xbf" if bom and i == 1 else b"") + data + end)
        exp.line = i
        expects.append(exp)
    blob = b"".join(out)
    path.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
    return expects


def _json_array(path: Path, rows: list[tuple[object, Expect]], *, indent: int | None = 4) -> list[Expect]:
    """A JSON array written element by element (pretty-printed like alpaca_data.json); each
    element's Expect gets the line it starts on. A `bytes` element is written as it is."""
    parts, line, expects = ["["], 1, []
    for i, (row, exp) in enumerate(rows):
        text = (
            row.decode("utf-8", "surrogateescape")
            if isinstance(row, bytes)
            else json.dumps(row, ensure_ascii=False, indent=indent)
        )
        sep = "\n" + ("" if i == 0 else "")
        parts.append(sep)
        line += 1
        exp.line = line
        expects.append(exp)
        parts.append(text + ("," if i < len(rows) - 1 else ""))
        line += text.count("\n")
    parts.append("\n]\n")
    path.write_bytes("".join(parts).encode("utf-8", "surrogateescape"))
    return expects


# ----------------------------------------------------------------------------------- formats
def dolly(out: Path, rng: random.Random, plain: int) -> Fixture:
    rows: list[tuple[bytes | dict, Expect]] = []

    def row(instruction, response, category, context="", **extra):
        return {"instruction": instruction, "context": context, "response": response, "category": category, **extra}

    rows += [
        (row("Give three tips for staying healthy.", "Eat well, sleep, move.", "brainstorming"), Expect(0, "kept")),
        (
            row("Who wrote the novel?", "Ann Lee.", "closed_qa", "The novel was written by Ann Lee in 1901."),
            Expect(0, "excluded", "context"),
        ),
        (
            row("Extract the city names.", "Oslo, Lima.", "information_extraction", "She flew from Oslo to Lima."),
            Expect(0, "excluded", "context"),
        ),
        (
            row("Summarize this paragraph.", "Rain fell.", "summarization", "It rained all day in the small town."),
            Expect(0, "excluded", "context"),
        ),
        # a context in IF categories: removed, and never moved (its task is not context-dependent)
        (
            row("Why is the sky blue?", "Scattering.", "open_qa", "Light scatters off molecules in the air."),
            Expect(0, "excluded", "context"),
        ),
        (
            row("Classify these animals.", "Mammals.", "classification", "Dog, cat, cow."),
            Expect(0, "excluded", "context"),
        ),
        (row("Write a haiku about autumn.", "Leaves fall slowly down.", "creative_writing"), Expect(0, "kept")),
        (
            row("Describe a sunrise.", "Gold light.", "general_qa", source_url="https://example.org/x"),
            Expect(0, "kept"),
        ),  # an unknown field: kept under meta
        (
            b'{"instruction": "Name a '
            + BAD_BYTE
            + b' drink.", "context": "", "response": "Tea.", "category": "open_qa"}',
            Expect(0, "invalid", "UTF-8"),
        ),
        (row("This row has no response.", None, "open_qa"), Expect(0, "invalid", "response")),
        (row("A NUL hides here.", "ok\u0000ok", "open_qa"), Expect(0, "invalid", "NUL")),
        (b"[" * 60_000 + b"]" * 60_000, Expect(0, "invalid", "nested")),
    ]
    for _ in range(plain):
        rows.append(
            (
                row(_sentence(rng, 10), _sentence(rng, 12), rng.choice(["open_qa", "brainstorming", "general_qa"])),
                Expect(0, "kept"),
            )
        )
    path = out / "dolly.jsonl"
    return Fixture(path, "dolly", "instruction", _jsonl(path, rows, bom=True, crlf=True))


def alpaca(out: Path, rng: random.Random, plain: int) -> Fixture:
    rows: list[tuple[object, Expect]] = [
        (
            {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
            Expect(0, "kept"),
        ),
        (
            {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            Expect(0, "excluded", "context"),
        ),
        ({"instruction": "Name a prime number.", "input": "<noinput>", "output": "Seven."}, Expect(0, "kept")),
        ({"instruction": "Missing its output.", "input": ""}, Expect(0, "invalid", "output")),
        ("not an object", Expect(0, "invalid", "object")),
        (
            b'{"instruction": "Deeply nested input.", "input": ' + b"[" * 5000 + b"]" * 5000 + b', "output": "x"}',
            Expect(0, "invalid", "nested"),
        ),
    ]
    for _ in range(plain):
        rows.append(({"instruction": _sentence(rng, 9), "input": "", "output": _sentence(rng, 14)}, Expect(0, "kept")))
    path = out / "alpaca.json"
    return Fixture(path, "alpaca", "instruction", _json_array(path, rows))


def sharegpt(out: Path, rng: random.Random, plain: int) -> Fixture:
    def turn(who, text):
        return {"from": who, "value": text}

    rows: list[tuple[object, Expect]] = [
        (
            {
                "id": "c1",
                "conversations": [
                    turn("human", "What is a comet?"),
                    turn("gpt", "An icy body."),
                    turn("human", "Shorter."),
                    turn("gpt", "Ice."),
                ],
            },
            Expect(0, "kept"),
        ),
        # starts with the assistant: the leading turn is skipped, the pair after it kept
        (
            {
                "id": "c2",
                "conversations": [
                    turn("gpt", "Hello! How can I help?"),
                    turn("human", "Name a planet."),
                    turn("gpt", "Mars."),
                ],
            },
            Expect(0, "kept"),
        ),
        (
            {
                "id": "c3",
                "conversations": [
                    turn("system", "Be brief."),
                    turn("human", "Name an ocean."),
                    turn("gpt", "Pacific."),
                ],
            },
            Expect(0, "kept"),
        ),
        ({"id": "c4", "conversations": [turn("human", "Anyone there?")]}, Expect(0, "excluded", "assistant")),
        (
            {
                "id": "c5",
                "conversations": [turn("human", "First try."), turn("human", "Name a river."), turn("gpt", "Nile.")],
            },
            Expect(0, "kept"),
        ),
        (
            {
                "id": "c6",
                "messages": [{"role": "user", "content": "Name a metal."}, {"role": "assistant", "content": "Iron."}],
            },
            Expect(0, "kept"),
        ),
        (
            {"id": "c7", "conversations": [turn("human", "Say nothing."), turn("gpt", "")]},
            Expect(0, "excluded", "assistant"),
        ),
        ({"id": "c8", "conversations": "not a list"}, Expect(0, "invalid", "conversations")),
    ]
    for i in range(plain):
        rows.append(
            (
                {"id": f"p{i}", "conversations": [turn("human", _sentence(rng, 9)), turn("gpt", _sentence(rng, 12))]},
                Expect(0, "kept"),
            )
        )
    path = out / "sharegpt.json"
    return Fixture(path, "sharegpt", "instruction", _json_array(path, rows, indent=None))


def self_instruct(out: Path, rng: random.Random, plain: int) -> Fixture:
    rows: list[tuple[bytes | dict, Expect]] = [
        (
            {"prompt": "Task: List three colors.\n\nOutput:", "completion": " Red, green, blue.<|endoftext|>"},
            Expect(0, "kept"),
        ),
        (
            {"prompt": "Sort the numbers.\nInput: 3, 1, 2\nOutput:", "completion": " 1, 2, 3<|endoftext|>"},
            Expect(0, "excluded", "context"),
        ),
        (
            {
                "prompt": "Rewrite the sentence politely.\n\nGive me the salt.\n\n",
                "completion": "Please pass the salt.",
            },
            Expect(0, "excluded", "context"),
        ),
        ({"prompt": "Output:", "completion": "nothing"}, Expect(0, "invalid", "instruction")),
    ]
    for _ in range(plain):
        rows.append(
            (
                {"prompt": f"{_sentence(rng, 9)}\n\nOutput:", "completion": f" {_sentence(rng, 11)}<|endoftext|>"},
                Expect(0, "kept"),
            )
        )
    path = out / "self_instruct.jsonl"
    return Fixture(path, "self-instruct", "instruction", _jsonl(path, rows))


def _nq_row(
    rng: random.Random, qid: int, *, short: bool = True, long: bool = True, yes_no: str = "NONE", filler: int = 40
) -> dict:
    before = [w for _ in range(filler) for w in [rng.choice(WORDS)]]
    para = _sentence(rng, 12).rstrip(".").split()
    answer = para[4:6]
    tokens = ["<H1>", "Title", "</H1>"] + before + ["<P>"] + para + ["</P>"] + before[:10]
    ps = 3 + len(before)
    la = (
        {"start_token": ps, "end_token": ps + len(para) + 2, "candidate_index": 0}
        if long
        else {"start_token": -1, "end_token": -1, "candidate_index": -1}
    )
    shorts = [{"start_token": ps + 1 + 4, "end_token": ps + 1 + 6}] if short else []
    return {
        "example_id": qid,
        "question_text": f"what is the {' '.join(answer)} of {rng.choice(WORDS)}",
        "document_text": " ".join(tokens),
        "document_url": f"https://en.wikipedia.org/wiki/{qid}",
        "long_answer_candidates": [{"start_token": ps, "end_token": ps + len(para) + 2, "top_level": True}],
        "annotations": [{"annotation_id": qid, "long_answer": la, "short_answers": shorts, "yes_no_answer": yes_no}],
    }


def nq_simplified(out: Path, rng: random.Random, plain: int) -> Fixture:
    rows: list[tuple[bytes | dict, Expect]] = [
        (_nq_row(rng, 1), Expect(0, "kept")),
        (_nq_row(rng, 2, short=False), Expect(0, "excluded", "long answer only")),
        (_nq_row(rng, 3, short=False, yes_no="YES"), Expect(0, "excluded", "yes/no")),
        (_nq_row(rng, 4, short=False, long=False), Expect(0, "excluded", "no answer")),
        (_nq_row(rng, 5, long=False), Expect(0, "kept")),  # a short answer without a long one: a window around it
        (_nq_row(rng, 6, filler=60_000), Expect(0, "kept")),  # a long Wikipedia page (~400 KB)
        ({**_nq_row(rng, 7), "annotations": "oops"}, Expect(0, "invalid", "annotations")),
    ]
    for i in range(plain):
        rows.append((_nq_row(rng, 100 + i), Expect(0, "kept")))
    path = out / "nq_simplified.jsonl.gz"
    return Fixture(path, "natural-questions", "grounded", _jsonl(path, rows, gz=True))


def nq_common(out: Path, rng: random.Random, plain: int) -> Fixture:
    ctx = "The Nile is a major river in northeastern Africa. It flows into the Mediterranean Sea."
    rows: list[tuple[bytes | dict, Expect]] = [
        (
            {"id": "q1", "question": "where does the nile flow", "context": ctx, "answers": ["the Mediterranean Sea"]},
            Expect(0, "kept"),
        ),
        (
            {
                "id": "q2",
                "question": "what is the nile",
                "context": ctx,
                "answers": {"text": ["a major river"], "answer_start": [12]},
            },
            Expect(0, "kept"),
        ),
        (
            {"id": "q3", "question": "which continent", "context": ctx, "answers": [{"text": "Africa"}]},
            Expect(0, "kept"),
        ),
        (
            {"id": "q4", "question": "who named the nile", "context": ctx, "answers": []},
            Expect(0, "excluded", "answer"),
        ),
        ({"id": "q5", "question": "broken answers", "context": ctx, "answers": 5}, Expect(0, "invalid", "answers")),
    ]
    for i in range(plain):
        rows.append(
            (
                {
                    "id": f"p{i}",
                    "question": _sentence(rng, 7).rstrip("."),
                    "context": _sentence(rng, 25),
                    "answers": [rng.choice(WORDS)],
                },
                Expect(0, "kept"),
            )
        )
    path = out / "nq.jsonl"
    return Fixture(path, "natural-questions", "grounded", _jsonl(path, rows))


def cnn_rows(rng: random.Random, plain: int, max_field_chars: int) -> list[tuple[dict, Expect]]:
    long_article = " ".join(_sentence(rng, 12) for _ in range(max_field_chars // 200))  # about half the limit
    too_long = " ".join(_sentence(rng, 12) for _ in range(max_field_chars // 60))  # over the limit
    rows = [
        (
            {
                "id": "a1",
                "article": "(CNN) -- A storm hit the coast.\nHomes lost power.",
                "highlights": "Storm hits coast\nPower lost in homes",
            },
            Expect(0, "kept"),
        ),
        ({"id": "a2", "article": long_article, "highlights": "A very long article.\nIt goes on."}, Expect(0, "kept")),
        (
            {"id": "a3", "article": too_long, "highlights": "Too long to keep."},
            Expect(0, "too-large", "max_field_chars"),
        ),
        (
            {"id": "a4", "article": "An article without highlights.", "highlights": ""},
            Expect(0, "invalid", "highlights"),
        ),
    ]
    for i in range(plain):
        rows.append(
            (
                {
                    "id": f"p{i}",
                    "article": " ".join(_sentence(rng, 12) for _ in range(6)),
                    "highlights": "\n".join(_sentence(rng, 8) for _ in range(2)),
                },
                Expect(0, "kept"),
            )
        )
    return rows


def cnn_csv(out: Path, rows: list[tuple[dict, Expect]]) -> Fixture:
    """CSV with CRLF record ends, quoted multi-line fields, and one record with a non-UTF-8 byte."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["id", "article", "highlights"])
    line = 2
    expects = []
    for row, exp in rows:
        exp = Expect(line, exp.outcome, exp.words, exp.examples)
        expects.append(exp)
        before = buf.tell()
        w.writerow([row["id"], row["article"], row["highlights"]])
        line += buf.getvalue()[before:].count("\n")
    data = buf.getvalue().encode()
    data += b'x1,"A ' + BAD_BYTE + b' article.","A summary."\r\n'
    expects.append(Expect(line, "invalid", "UTF-8"))
    path = out / "cnn_dailymail.csv"
    path.write_bytes(data)
    return Fixture(path, "cnn-dailymail", "grounded", expects)


def cnn_parquet(out: Path, rows: list[tuple[dict, Expect]]) -> Fixture:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([r for r, _ in rows])
    path = out / "cnn_dailymail.parquet"
    pq.write_table(table, path, row_group_size=16)
    return Fixture(
        path, "cnn-dailymail", "grounded", [Expect(i, e.outcome, e.words) for i, (_, e) in enumerate(rows, start=1)]
    )


def cnn_jsonl(out: Path, rows: list[tuple[dict, Expect]]) -> Fixture:
    path = out / "cnn_dailymail.jsonl"
    expects = _jsonl(path, [(r, Expect(0, e.outcome, e.words)) for r, e in rows])
    return Fixture(path, "cnn-dailymail", "grounded", expects)


def array_in_jsonl(out: Path, rng: random.Random, plain: int) -> Fixture:
    """A JSON array where JSON Lines was expected (one element per line, as some exporters write)."""
    rows = [
        ({"instruction": _sentence(rng, 9), "input": "", "output": _sentence(rng, 10)}, Expect(0, "kept"))
        for _ in range(plain)
    ]
    path = out / "array_named.jsonl"
    return Fixture(path, "alpaca", "instruction", _json_array(path, rows, indent=None))


def mapped_csv(out: Path, rng: random.Random, plain: int) -> Fixture:
    """An unpublished shape: needs `fields:` (question / passage / gold)."""
    rows = [
        (
            {"qid": f"m{i}", "question": _sentence(rng, 7), "passage": _sentence(rng, 20), "gold": rng.choice(WORDS)},
            Expect(0, "kept"),
        )
        for i in range(plain)
    ]
    path = out / "custom_qa.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["qid", "question", "passage", "gold"])
        w.writeheader()
        for r, _ in rows:
            w.writerow(r)
    return Fixture(path, "mapped", "grounded", [Expect(i, e.outcome) for i, (_, e) in enumerate(rows, start=2)])


def broken(out: Path, rng: random.Random) -> dict[str, Path]:
    """Files `data check` must call unusable."""
    files = {
        "empty": (out / "empty.jsonl", b""),
        "garbage": (out / "garbage.jsonl", b"\x00\x01\x02 not json\n" * 5 + b"{\n"),
        "unknown_shape": (out / "unknown_shape.jsonl", b'{"foo": 1, "bar": 2}\n' * 3),
        "mostly_bad": (
            out / "mostly_bad.jsonl",
            b"".join(
                (
                    json.dumps({"instruction": _sentence(rng, 8), "input": "", "output": "ok"}).encode()
                    if i % 2
                    else b"{oops"
                )
                + b"\n"
                for i in range(20)
            ),
        ),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {k: p for k, (p, _) in files.items()}


PLAIN = 80  # plain rows per file: the messy ones stay under the default max_bad_fraction (0.05)


def write_fixtures(out: Path, *, max_field_chars: int = 100_000, seed: int = 0) -> dict[str, Fixture]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    fx = {
        "dolly": dolly(out, rng, PLAIN),
        "alpaca": alpaca(out, rng, PLAIN),
        "sharegpt": sharegpt(out, rng, PLAIN),
        "self_instruct": self_instruct(out, rng, PLAIN),
        "nq_simplified": nq_simplified(out, rng, PLAIN),
        "nq_common": nq_common(out, rng, PLAIN),
        "array_named": array_in_jsonl(out, rng, 20),
        "mapped": mapped_csv(out, rng, 30),
    }
    cnn = cnn_rows(rng, PLAIN, max_field_chars)
    fx["cnn_csv"] = cnn_csv(out, cnn)
    fx["cnn_parquet"] = cnn_parquet(out, cnn)
    fx["cnn_jsonl"] = cnn_jsonl(out, cnn)
    return fx


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures")
    for name, f in write_fixtures(target).items():
        print(
            f"{name:14s} {f.path}  ({f.format}: {f.count('kept')} kept, {f.count('excluded')} excluded, "
            f"{f.count('invalid')} invalid, {f.count('too-large')} too large)"
        )
    for name, p in broken(target, random.Random(1)).items():
        print(f"{name:14s} {p}  (unusable)")
