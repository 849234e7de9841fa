"""The GPU check: fine-tuning (LoRA and full, bf16) and generation of a 0.5-1.5B model built from a
config, with MFU and tokens/s, generation against vLLM's raw engine. One script, one process, under
ten minutes of an H100/H200; every figure it prints comes from this one run.

    python3 bench/gpu_check.py                       # the 0.5B shape (Qwen2-0.5B's config), on the GPU
    python3 bench/gpu_check.py --shape 1.5b          # Qwen2-1.5B's config
    python3 bench/gpu_check.py --shape tiny --device cpu --steps 2   # the CPU path (tests run this)
    .venv-vllm/bin/python bench/gpu_check.py --shape tiny --device cpu --skip lora,full   # vLLM's row on a CPU
    python3 bench/gpu_check.py --json out.json       # also write the figures as JSON

Self-contained on purpose: it needs torch, transformers and peft (the GPU image has them; it has
no pydantic, so the project's library is not imported) and, for the vLLM rows, vllm (skipped with
a line saying so when it is not installed). The weights are random (nothing is downloaded): speed
does not depend on them, and the model is built from the shape's config exactly as a checkpoint of
that architecture would be. Generation feeds token ids (no tokenizer) and ignores end-of-sequence,
so every sample is exactly --new-tokens long in both paths.

What it measures, each after --warmup steps that are not timed:
  lora   LoRA r16 on q/k/v/o/gate/up/down of every layer, AdamW, bf16 weights, --batch x --seq tokens
  full   all weights, AdamW (bf16 weights and states), same batches
  hf     transformers generate, batch of --prompts, greedy, --new-tokens each
  vllm   vLLM's offline engine on the same prompt ids (the model saved once to a temp folder)
MFU = achieved FLOP/s over the chip's dense bf16 peak (--peak-tflops, default from the device
name: 989 for H100/H200 SXM). Training FLOPs per token: 6N for full, 4N for LoRA (forward 2N, the
input gradients 2N; the frozen weights get none) plus attention 12·L·d·s (full) / 8·L·d·s (LoRA),
N the non-embedding parameters. Generation FLOPs per output token: 2N (+ attention), decode is
bound by memory, so its MFU is low by nature; tokens/s is the figure to read there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

SHAPES = {
    # Qwen2's published configs (the architecture vLLM, transformers and the project all serve)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True),  # head_dim 64: vLLM CPU
}
PEAKS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(shape: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).to(device)
    return model, cfg


def non_embedding_params(model) -> int:
    emb = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - emb


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(model, cfg, mode: str, args, device: str) -> dict:
    import torch

    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.startswith("cuda"))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g) for _ in range(4)]
    times = []
    for i in range(args.warmup + args.steps):
        ids = batches[i % len(batches)].to(device)
        sync(device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    tokens = args.batch * args.seq * len(times)
    secs = sum(times)
    n = non_embedding_params(model.get_base_model() if mode == "lora" else model)
    attn = cfg.num_hidden_layers * cfg.hidden_size * args.seq
    flops_per_token = (4 * n + 8 * attn) if mode == "lora" else (6 * n + 12 * attn)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return {"tokens_per_s": tokens / secs, "tflops": flops_per_token * tokens / secs / 1e12,
            "trainable": sum(p.numel() for p in params), "step_s": secs / len(times), "peak_mem_gib": peak_mem,
            "final_loss": float(loss.detach())}


def hf_generate(model, cfg, args, device: str) -> dict:
    import torch

    model.eval()
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, cfg.vocab_size, (args.prompts, args.prompt_len), generator=g).to(device)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompts[:2], max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        out = model.generate(prompts, **kw)
        sync(device)
        secs = time.perf_counter() - t0
    tokens = (out.shape[1] - args.prompt_len) * out.shape[0]
    return {"tokens_per_s": tokens / secs, "tokens": tokens, "seconds": secs}


def vllm_generate(model, cfg, args, device: str) -> dict | None:
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        return None
    import torch

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model.save_pretrained(tmp)
        t0 = time.perf_counter()
        extra = dict(gpu_memory_utilization=0.5) if device.startswith("cuda") else dict(enforce_eager=True)
        llm = LLM(model=tmp, skip_tokenizer_init=True, dtype="bfloat16", seed=0, **extra)
        start = time.perf_counter() - t0
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(0, cfg.vocab_size, (args.prompts, args.prompt_len), generator=g).tolist()
        sp = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, min_tokens=args.new_tokens,
                            ignore_eos=True, detokenize=False)
        llm.generate([TokensPrompt(prompt_token_ids=ids[0])], sp, use_tqdm=False)  # warm-up
        t1 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], sp, use_tqdm=False)
        secs = time.perf_counter() - t1
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        del llm
    return {"tokens_per_s": tokens / secs, "tokens": tokens, "seconds": secs, "engine_start_s": start}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per training mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the chip's dense bf16 peak (default: by name)")
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: lora,full,hf,vllm")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu (and --shape tiny) for the CPU path", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), 0.0)
    skip = set(filter(None, args.skip.split(",")))
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    for mode in ("lora", "full"):
        if mode in skip:
            continue
        model, cfg = build(args.shape, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        rows[mode] = train(model, cfg, mode, args, args.device)
        print(f"# {mode}: {json.dumps(rows[mode])}", file=sys.stderr, flush=True)
        del model
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    model, cfg = build(args.shape, args.device)
    n = non_embedding_params(model)
    if "hf" not in skip:
        rows["hf"] = hf_generate(model, cfg, args, args.device)
    if "vllm" not in skip:
        r = vllm_generate(model, cfg, args, args.device)
        if r is None:
            print("# vllm: not installed here; its row is left out", file=sys.stderr)
        else:
            rows["vllm"] = r
    for key in ("hf", "vllm"):
        if key in rows:
            attn = cfg.num_hidden_layers * cfg.hidden_size * (args.prompt_len + args.new_tokens // 2)
            rows[key]["tflops"] = (2 * n + 4 * attn) * rows[key]["tokens_per_s"] / 1e12
    print(f"{args.shape} ({n / 1e6:,.0f}M non-embedding parameters), {name}, peak {peak or '?'} TFLOP/s bf16; "
          f"train batch {args.batch} x {args.seq}, {args.steps} timed steps; generation {args.prompts} prompts x "
          f"{args.prompt_len} tokens -> {args.new_tokens} new; {time.perf_counter() - t_all:.0f} s in all\n")
    print("| row | tokens/s | TFLOP/s | MFU | vs vLLM raw | notes |")
    print("|---|---:|---:|---:|---:|---|")
    raw = rows.get("vllm", {}).get("tokens_per_s")
    for key, r in rows.items():
        mfu = f"{r['tflops'] / peak:.1%}" if peak else "-"
        vs = f"{r['tokens_per_s'] / raw:.2f}x" if raw and key in ("hf", "vllm") else "-"
        note = (f"{r['trainable'] / 1e6:,.1f}M trainable, {r['step_s'] * 1000:.0f} ms/step, peak "
                f"{r['peak_mem_gib']:.1f} GiB" if "trainable" in r else
                f"engine start {r['engine_start_s']:.0f} s" if "engine_start_s" in r else "greedy, batch at once")
        print(f"| {key} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {mfu} | {vs} | {note} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": args.shape, "device": name, "peak_tflops": peak, "params": n, "rows": rows,
                       "args": vars(args)}, fh, indent=1)
    return 0


if __name__ == "__main__":  # vLLM spawns workers that import this file
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    raise SystemExit(main())
