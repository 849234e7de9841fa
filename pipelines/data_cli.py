"""`python -m pipelines data check PATH... [--format F]`: is this data usable, before any GPU hour.

    python -m pipelines data check data/dolly.jsonl s3://bucket/cd/nq.jsonl.gz
    python -m pipelines data check alpaca_data.json --format alpaca --config configs/paper-7b.yaml
    python -m pipelines data check rows.parquet --quarantine bad.jsonl --card card.html

Reads the files through the same code the mix step runs (readers, format modules, checks,
deduplication), prints for each path the detected format, the rows kept and the rows not kept
with file, line and reason, then the data card. Lengths are in tokens of `--model` (or the
config's model.base) where its tokenizer can be loaded, else in words. Exit code 0: usable;
1: not usable (unreadable, empty, format not recognised, nothing kept, or more invalid rows than
data.max_bad_fraction); 2: a bad command line or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="check data files (formats, bad rows, the data card) without running anything")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="read files as the mix step would and say whether they are usable",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("paths", nargs="+", metavar="PATH", help="files or directories, s3:// or hf://datasets/ URIs")
    c.add_argument("--format", default="auto", help="the format of every PATH (default: detected from the rows)")
    c.add_argument("--slot", default="auto", choices=["auto", "instruction", "grounded"],
                   help="judge rows as the mix step would in this slot (default: each format's own side)")
    c.add_argument("--config", help="a pipeline config: its data section's limits and options, its model's tokenizer")
    c.add_argument("--model", help="model whose tokenizer measures lengths (default: the config's model.base; "
                   "without either, lengths are counted in words)")
    c.add_argument("--max-bad-fraction", type=float, help="override data.max_bad_fraction")
    c.add_argument("--show", type=int, default=20, help="rows not kept to print (default 20)")
    c.add_argument("--quarantine", help="write every row not kept (file, line, reason, raw) to this JSONL file")
    c.add_argument("--card", help="also write the data card to this file (.md, .html or .json)")


def main(args: argparse.Namespace) -> int:
    from reset.config import DataConfig, ModelConfig, load_config
    from reset.data.card import to_html, to_markdown, whitespace_meter
    from reset.data.check import check
    from reset.data.sources import ALL_FORMATS

    fmt = args.format
    if fmt != "auto" and fmt not in ALL_FORMATS or fmt == "mapped":
        print(f"error: --format {fmt!r}: one of {[f for f in ALL_FORMATS if f != 'mapped']} (map other shapes with "
              "`fields:` in a config)", file=sys.stderr)
        return 2
    if args.config:
        cfg = load_config(args.config)
        data, model = cfg.data, cfg.model
    else:
        data, model = DataConfig(), None
    if args.max_bad_fraction is not None:
        data = DataConfig(**{**data.model_dump(), "max_bad_fraction": args.max_bad_fraction})
    ref = args.model or (model.base if model else "")
    limits = model or ModelConfig()
    if ref:
        from reset.steps import length_meter

        meter = length_meter(ModelConfig(**{**limits.model_dump(), "base": ref}))
    else:
        meter = whitespace_meter(limits.max_length, limits.max_prompt_length, "no --model or --config given")
    result = check(args.paths, data, fmt=fmt, slot=args.slot, meter=meter, quarantine_path=args.quarantine,
                   show=args.show)

    for rep in result.reports:
        files = ", ".join(f"{f['layout']}, {f['bytes']:,} bytes, sha256 {f['digest'][:12]}" for f in rep.files[:3])
        print(f"{rep.path}: format {rep.format} ({files or 'no file read'})")
        not_kept = sum(rep.rejected.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(rep.rejected.items()))
        print(f"  rows read {rep.rows:,}; examples kept {rep.kept:,}" + (f" ({rep.moved:,} moved to grounded)"
              if rep.moved else "") + f"; rows not kept {not_kept:,}" + (f" ({detail})" if detail else ""))
        for msg in rep.messages:
            print(f"  note: {msg}")
    if result.rejected:
        print(f"\nrows not kept ({result.rejected_total:,}; file:line: reason):")
        for r in result.rejected[: args.show]:
            print(f"  {r}")
        if result.rejected_total > args.show:
            print(f"  ... and {result.rejected_total - args.show:,} more"
                  + (f" (all in {args.quarantine})" if args.quarantine else " (--quarantine FILE writes them all)"))
    card_md = to_markdown(result.card)
    print("\n" + card_md)
    if args.card:
        path = Path(args.card)
        text = (to_html(result.card) if path.suffix in (".html", ".htm") else
                json.dumps(result.card, indent=2, default=str) if path.suffix == ".json" else card_md)
        path.write_text(text, encoding="utf-8")
        print(f"wrote the data card to {path}")
    if result.usable:
        print("usable: yes")
        return 0
    print("usable: NO", file=sys.stderr)
    for p in result.problems:
        print(f"  {p}", file=sys.stderr)
    return 1
