"""The mix step at scale: 1M rows in the published formats, streamed, against a baseline measured
in the same run.

    .venv/bin/python bench/mix_bench.py [--rows 1000000] [--dir /tmp/mix-bench] [--keep]

Writes two files (not timed): half the rows as Dolly-15K JSONL (instruction following; 10% carry
a context and are removed, as in the paper) and half as Natural Questions in the common
question/context/answers shape (extractive), with 1% exact duplicates, 0.5% near-duplicates
(one word of a long context changed) and 0.1% broken lines. Then, each in a fresh process so
the peak memory is its own:

- baseline: read every line and json.loads it (what any reader must do at least);
- mix: `reset.data.mix.mix_to_files` with data.dedupe near, a 1:1 mixture of everything,
  1,000 held-out prompts per kind, 4,000 seen prompts per kind, lengths and truncation measured
  with a real tokenizer (builtin:tiny-llama's BPE; model.max_length 2048 / max_prompt_length 1536).

Prints a Markdown table: wall and CPU seconds, peak RSS (MB) and the ratios to the baseline, with
the machine's load average (other work on a shared machine stretches wall time, not CPU time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generate(out: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(50_000)]
    words = rng.choices
    half = rows // 2
    dolly, nq = out / "dolly.jsonl", out / "nq.jsonl"
    cats = ["open_qa", "brainstorming", "general_qa", "creative_writing", "classification", "closed_qa"]
    with open(dolly, "w") as fh:
        prev: list[str] = []
        for i in range(half):
            if i % 1000 == 999:
                fh.write('{"instruction": "broken\n')
                continue
            if prev and i % 100 == 50:  # an exact duplicate
                fh.write(prev[rng.randrange(len(prev))])
                continue
            cat = cats[i % len(cats)]
            ctx = " ".join(words(vocab, k=rng.randint(40, 120))) if i % 10 == 0 else ""
            line = json.dumps({"instruction": " ".join(words(vocab, k=rng.randint(10, 25))), "context": ctx,
                               "response": " ".join(words(vocab, k=rng.randint(20, 80))), "category": cat}) + "\n"
            if len(prev) < 1000:
                prev.append(line)
            fh.write(line)
    with open(nq, "w") as fh:
        last = None
        for i in range(rows - half):
            if i % 1000 == 999:
                fh.write("{not json\n")
                continue
            if last is not None and i % 200 == 100:  # a near-duplicate: one word of the context changed
                ctx = last["context"].split()
                ctx[len(ctx) // 2] = "changed"
                fh.write(json.dumps({**last, "id": f"n{i}", "context": " ".join(ctx)}) + "\n")
                continue
            ctx_words = words(vocab, k=rng.randint(60, 150))
            j = rng.randrange(len(ctx_words) - 4)
            row = {"id": f"n{i}", "question": " ".join(words(vocab, k=rng.randint(8, 12))),
                   "context": " ".join(ctx_words), "answers": [" ".join(ctx_words[j:j + rng.randint(1, 4)])]}
            last = row
            fh.write(json.dumps(row) + "\n")
    return dolly, nq


BASELINE = """
import json, sys, time, resource
t = time.perf_counter(); n = 0
for path in sys.argv[1:]:
    with open(path, "rb") as fh:
        for line in fh:
            try:
                json.loads(line); n += 1
            except ValueError:
                pass
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - t, "rows": n, "cpu": ru.ru_utime + ru.ru_stime,
                  "peak_mb": ru.ru_maxrss / 1024}))
"""

MIX = """
import json, sys, time, resource
sys.path.insert(0, sys.argv[1])
from reset.config import DataConfig, ModelConfig
from reset.data.mix import mix_to_files
from reset.steps import length_meter
out = sys.argv[4]
meter = length_meter(ModelConfig(base="builtin:tiny-llama", max_length=2048, max_prompt_length=1536), out + "/cache")
ru0 = resource.getrusage(resource.RUSAGE_SELF)
before = ru0.ru_maxrss / 1024
cfg = DataConfig(instruction=[{"path": sys.argv[2]}], grounded=[{"path": sys.argv[3]}], eval_per_kind=1000,
                 seen_prompts_per_kind=4000, max_bad_fraction=0.01, dedupe="near")
t = time.perf_counter()
rep = mix_to_files(cfg, out_train=out + "/train.jsonl", out_eval=out + "/eval.jsonl", out_seen=out + "/seen.jsonl",
                   out_rejected=out + "/rejected.jsonl", meter=meter)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": ru.ru_maxrss / 1024,
                  "before_mb": before, "stats": rep.stats, "quarantine": rep.quarantine.by_category,
                  "lengths": rep.card["sources"][1].get("lengths"), "unit": rep.card["length_unit"],
                  "overlap": {k: v for k, v in (rep.card.get("overlap") or {}).items() if k != "worst"}}))
"""


def child(code: str, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default="")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and outputs")
    args = ap.parse_args()
    out = Path(args.dir or tempfile.mkdtemp(prefix="mix-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    dolly, nq = generate(out, args.rows)
    size = (dolly.stat().st_size + nq.stat().st_size) / 1e6
    print(f"generated {args.rows:,} rows ({size:,.0f} MB) in {time.perf_counter() - t:.0f} s under {out}", flush=True)
    load0 = os.getloadavg()[0]
    base = child(BASELINE, str(dolly), str(nq))
    mixed = child(MIX, str(REPO), str(dolly), str(nq), str(out))
    load1 = os.getloadavg()[0]
    print(json.dumps(mixed["stats"]), json.dumps(mixed["quarantine"]), json.dumps(mixed["overlap"]), flush=True)
    print(f"nq lengths in {mixed['unit']}: {json.dumps(mixed['lengths'])}")
    print(f"load average (1 min) before / after: {load0:.1f} / {load1:.1f} on {os.cpu_count()} CPUs")
    print()
    print("| what | rows | wall (s) | CPU (s) | peak RSS (MB) | wall vs baseline | CPU vs baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| baseline: read + json.loads every line | {args.rows:,} | {base['wall']:.1f} | {base['cpu']:.1f} | "
          f"{base['peak_mb']:,.0f} | 1.0x | 1.0x |")
    print(f"| mix_to_files (read, convert, dedupe near, split, mix, write, card) | {args.rows:,} | "
          f"{mixed['wall']:.1f} | {mixed['cpu']:.1f} | {mixed['peak_mb']:,.0f} | {mixed['wall'] / base['wall']:.1f}x | "
          f"{mixed['cpu'] / base['cpu']:.1f}x |")
    print(f"| (the mix process before mixing: Python, transformers + torch for the tokenizer) | | | | "
          f"{mixed['before_mb']:,.0f} | | |")
    if not args.keep:
        for p in out.glob("*"):
            if p.is_file():
                p.unlink()


if __name__ == "__main__":
    main()
