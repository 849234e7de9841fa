"""LoRA supervised fine-tuning (peft) with the model's chat template, loss on response tokens only.

Used twice in ReSet: once from the base model on the IF + CD mixture (the MTL checkpoint), and
again from the MTL checkpoint on the reject-sampled set (continued fine-tuning). The LoRA
adapter is merged after training, so every checkpoint is a plain safetensors model that the
next step (or vLLM, or the registry) loads without peft; the adapter is kept beside it.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reset import progress, runtime
from reset.config import ModelConfig, TrainConfig
from reset.data.records import Example
from reset.models import chat, loading


def finetune(
    model_dir: str | os.PathLike[str],
    examples: Sequence[Example],
    out_dir: str | os.PathLike[str],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    *,
    provenance: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune the model in `model_dir` on `examples` (their reference responses) and save the
    merged model to `out_dir`. Returns metrics: first/final/mean loss, steps, tokens, seconds."""
    import torch
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise ValueError("finetune: no training examples")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    runtime.set_torch_threads()

    # --- model and tokenizer
    model, tok = loading.load(model_dir, for_training=True)
    device = model.device
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise ValueError(f"train.target_modules: none of {cfg.target_modules} exist in the model")
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    layers = None
    if cfg.lora_layers and n_layers and cfg.lora_layers < n_layers:
        layers = list(range(n_layers - cfg.lora_layers, n_layers))
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        layers_to_transform=layers, task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # --- data: token ids with response-only labels
    encoded = [
        chat.encode_sft(tok, ex, ex.response, model_cfg.max_length, model_cfg.system_prompt) for ex in examples
    ]
    steps_per_epoch = math.ceil(len(encoded) / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    log(
        f"[finetune] {len(encoded)} examples, {total_steps} optimizer steps "
        f"(batch {cfg.batch_size} x accum {cfg.grad_accum}), LoRA r={cfg.lora_r} on {targets} "
        f"({'top ' + str(len(layers)) if layers else 'all'} layers), "
        f"{n_train:,} trainable parameters, device {device}"
    )

    # --- optimizer and schedule (linear warmup, linear decay)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def lr_at(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    # --- train
    bar = progress.Progress(total_steps, "steps")
    rng = random.Random(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    tokens = 0
    t0 = time.time()
    model.train()
    for step in range(total_steps):
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:
                fresh = list(range(len(encoded)))
                rng.shuffle(fresh)
                order.extend(fresh)
            batch = [encoded[i] for i in order[: cfg.batch_size]]
            del order[: cfg.batch_size]
            ids, labels, mask = _collate(batch, tok.pad_token_id, device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(step_loss)
        if on_step:
            on_step(step, step_loss)
        bar.update(step + 1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            el = time.time() - t0
            eta = el / (step + 1) * (total_steps - step - 1)
            log(
                f"[finetune] step {step + 1}/{total_steps} loss {step_loss:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {tokens / el:.0f} tok/s eta {eta:.0f}s"
            )
    seconds = time.time() - t0

    # --- save: adapter beside the merged safetensors model
    out = Path(out_dir)
    model.save_pretrained(out / "adapter")
    merged = model.merge_and_unload()
    merged.eval()
    prov = dict(provenance or {})
    prov.update({"train": cfg.model_dump(), "model": model_cfg.model_dump(), "base_model_dir": str(model_dir)})
    loading.save(merged, tok, out, prov)
    tail = losses[-max(1, len(losses) // 5) :]
    return {
        "examples": len(encoded),
        "steps": total_steps,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "mean_loss": sum(losses) / len(losses),
        "trainable_params": n_train,
        "loss_history": losses,
    }


def _collate(batch, pad_id: int, device):
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(device), labels.to(device), mask.to(device)
