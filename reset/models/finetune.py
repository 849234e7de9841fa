"""Supervised fine-tuning: LoRA (peft) or full, the model's chat template, loss on response tokens only.

Used twice in ReSet: once from the base model on the IF + CD mixture (the MTL checkpoint), and
again from the MTL checkpoint on the reject-sampled set (continued fine-tuning).

What it supports:
- `train.method`: `lora` trains a peft adapter (optionally on the top `lora_layers` layers only);
  the output directory is that adapter, the tokenizer and `reset_provenance.json` naming the base
  model by reference; no merged copy of the model. Started from an adapter checkpoint it loads
  base + that adapter (trainable) and continues training the same adapter, so ReSet's output is
  again base + one adapter. `full` trains every weight and saves a whole model (bf16 when trained
  in bf16). `loading.load` / `loading.merge_to` turn either into a plain model where one is needed.
- `train.precision`: bf16 autocast on GPUs and on CPUs with bf16 arithmetic (avx512_bf16 / AMX),
  fp32 selectable. Under bf16 a LoRA run holds the frozen base in bf16 and the adapter in fp32.
- `train.gradient_checkpointing`, `train.batching` (length-grouped, random, packed).
- The loss takes logits only at the response positions (the output projection and the softmax
  over the vocabulary skip the prompt tokens); under FSDP the model's own loss is used.
- Checkpoints every `train.checkpoint_every` steps (weights being trained, optimizer, schedule,
  RNG states, data position), written atomically; a run started again with the same output
  directory continues from the last one and ends where an uninterrupted run ends.
- Several processes under torchrun: FSDP2 (`fully_shard` per decoder layer), one process per GPU
  (NCCL) or per CPU slot (gloo); every process reads the same data order and takes its slice of
  each micro-batch.

Launch one fine-tuning outside the pipeline (the cluster's training job runs the same command):

    python -m reset.models.finetune --config configs/demo.yaml --data train.jsonl --out out/mtl
    torchrun --nproc_per_node 8 -m reset.models.finetune --config configs/paper-7b.yaml \\
        --data /pvc/train.jsonl --out /pvc/mtl --set train.method=full
    python -m reset.models.finetune --config configs/demo.yaml --section continued_train \\
        --model out/mtl --data selected.jsonl --out out/reset

`--model` defaults to the config's `model.base`; `--section` picks `train` (default) or
`continued_train`; `--set key=value` overrides as in the pipeline CLI. Metrics go to stdout as
one JSON line (rank 0) and to `<out>/train_metrics.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reset import progress, runtime
from reset.config import ModelConfig, TrainConfig
from reset.data.records import Example
from reset.errors import ModelError
from reset.models import chat, loading

METRICS_FILE = "train_metrics.json"
GROUP_WINDOW = 16  # length-grouped batching sorts within windows of this many micro-batches


# ------------------------------------------------------------------------------ processes and precision
@dataclass
class Dist:
    """This process's place among the training processes (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def dist_info() -> Dist:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", td.get_rank())))
    return Dist()


def init_distributed() -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    import torch
    import torch.distributed as td

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            td.init_process_group("nccl")
        else:
            td.init_process_group("gloo")
    return dist_info()


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes in bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower
    than fp32, so it does not count."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(requested: str, device_type: str) -> str:
    """`train.precision` on this hardware: bf16 or fp32."""
    import torch

    if device_type == "cuda":
        has = torch.cuda.is_bf16_supported()
        what = "this GPU"
    else:
        has = cpu_has_bf16()
        what = "this CPU (no avx512_bf16 / amx_bf16 flag)"
    if requested == "bf16" and not has:
        raise ValueError(f"train.precision: bf16 is not supported by {what}; use auto or fp32")
    if requested == "auto":
        return "bf16" if has else "fp32"
    return requested


# ------------------------------------------------------------------------------------------ fine-tune
def finetune(
    model: str | os.PathLike[str],
    examples: Sequence[Example],
    out_dir: str | os.PathLike[str],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    *,
    provenance: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `model` (a model reference, a model directory or a LoRA checkpoint of this
    function) on `examples` (their reference responses) and save the result to `out_dir`.
    Returns metrics: first/final/mean loss, steps, tokens, seconds, resumed_from_step."""
    import torch

    if not examples:
        raise ValueError("finetune: no training examples")
    dist = dist_info()
    if not dist.main:
        log = _quiet
        on_step = None
    runtime.set_torch_threads()
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.precision, device.type)
    bf16 = precision == "bf16"
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # --- model: base (+ adapter), trainable parameters, gradient checkpointing, sharding
    load_t0 = time.monotonic()
    ref = str(model)
    base_dir, adapter_dir = loading.checkpoint_parts(ref, model_cfg.cache_dir)
    base_ref = _base_reference(ref, adapter_dir)
    net, tok, adapter_note = _build_model(base_dir, adapter_dir, cfg, bf16=bf16, distributed=dist.on)
    if cfg.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.config.use_cache = False
    if dist.on:
        _shard(net, bf16)
    else:
        net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    progress.add_phase("model_load", time.monotonic() - load_t0)

    # --- data: token ids with response-only labels, the batch plan
    encoded = [chat.encode_sft(tok, ex, ex.response, model_cfg.max_length, model_cfg.system_prompt) for ex in examples]
    per_step = cfg.batch_size * cfg.grad_accum * dist.world
    steps_per_epoch = math.ceil(len(encoded) / per_step)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    plan = BatchPlan([len(ids) for ids, _ in encoded], cfg.batch_size * dist.world, cfg.batching, cfg.seed)
    log(
        f"[finetune] {len(encoded)} examples, {total_steps} optimizer steps (batch {cfg.batch_size} x accum "
        f"{cfg.grad_accum} x {dist.world} process{'es' if dist.on else ''}, {cfg.batching}), {adapter_note}, "
        f"{n_train:,} trainable parameters, {precision} on {device.type}"
        f"{', gradient checkpointing' if cfg.gradient_checkpointing else ''}"
    )

    # --- optimizer and schedule (linear warmup, linear decay)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def lr_at(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    # --- resume from the last checkpoint of this same run, if there is one
    out = Path(out_dir)
    ckpt_root = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else out / "checkpoints"
    fingerprint = _fingerprint(ref, encoded, cfg, model_cfg, dist.world)
    state = TrainState()
    resumed_from = 0
    last = latest_checkpoint(ckpt_root)
    if last is not None:
        found = _load_checkpoint(last, net, opt, sched, plan, state, fingerprint, dist)
        if found:
            resumed_from = state.step
            log(f"[finetune] resuming from {last} (step {state.step}/{total_steps})")
        else:
            log(f"[finetune] {last} belongs to another configuration or data: starting afresh")

    # --- train
    fast_loss = not dist.on and supports_response_loss(net)
    bar = progress.Progress(total_steps, "steps") if dist.main else None
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    t0 = time.time() - state.seconds
    session_t0, session_tokens = time.time(), 0
    net.train()
    for step in range(state.step, total_steps):
        opt.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        step_tokens = 0
        for _ in range(cfg.grad_accum):
            rows = plan.next()[dist.rank * cfg.batch_size : (dist.rank + 1) * cfg.batch_size]
            batch = [encoded[i] for i in rows]
            inputs = pack(batch) if cfg.batching == "packed" else pad(batch, tok.pad_token_id)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with autocast():
                loss = response_loss(net, inputs) if fast_loss else net(**inputs, use_cache=False).loss
            (loss / cfg.grad_accum).backward()
            step_loss += loss.detach().float() / cfg.grad_accum
            step_tokens += sum(len(ids) for ids, _ in batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if dist.on:
            import torch.distributed as td

            counts = torch.tensor([float(step_tokens)], device=device)
            td.all_reduce(step_loss, op=td.ReduceOp.SUM)
            td.all_reduce(counts, op=td.ReduceOp.SUM)
            step_loss /= dist.world
            step_tokens = int(counts.item())
        loss_value = float(step_loss.item())
        state.step, state.tokens = step + 1, state.tokens + step_tokens
        state.losses.append(loss_value)
        session_tokens += step_tokens
        if on_step:
            on_step(step, loss_value)
        if bar:
            bar.update(step + 1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            el = time.time() - session_t0
            eta = el / (step + 1 - resumed_from) * (total_steps - step - 1)
            log(
                f"[finetune] step {step + 1}/{total_steps} loss {loss_value:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {session_tokens / el:.0f} tok/s eta {eta:.0f}s"
            )
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total_steps:
            state.seconds = time.time() - t0
            _save_checkpoint(ckpt_root, net, opt, sched, plan, state, fingerprint, dist)
    seconds = time.time() - t0
    progress.add_phase("compute", time.time() - session_t0)

    # --- save: the adapter and a reference to its base (lora), or the whole model (full)
    prov = dict(provenance or {})
    prov.update({
        "train": cfg.model_dump(), "model": model_cfg.model_dump(), "method": cfg.method, "precision": precision,
        "base_model": base_ref, "base_model_cache_dir": model_cfg.cache_dir, "base_model_dir": str(base_dir),
        "source_checkpoint": ref, "world_size": dist.world,
    })
    tail = state.losses[-max(1, len(state.losses) // 5) :]
    metrics = {
        "examples": len(encoded),
        "steps": total_steps,
        "tokens": state.tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(session_tokens / max(time.time() - session_t0, 1e-9), 2),
        "first_loss": state.losses[0],
        "final_loss": sum(tail) / len(tail),
        "mean_loss": sum(state.losses) / len(state.losses),
        "trainable_params": n_train,
        "resumed_from_step": resumed_from,
        "loss_history": list(state.losses),
    }
    with progress.timed("save"):
        _save_output(net, tok, out, cfg, prov, metrics, bf16=bf16, base_ref=base_ref, dist=dist)
    if dist.main:
        shutil.rmtree(ckpt_root, ignore_errors=True)
    _barrier(dist)
    return metrics


def _quiet(_: str) -> None:
    pass


def _base_reference(ref: str, adapter_dir: Path | None) -> str:
    """How the output names its base model: the base of an adapter checkpoint, else the reference
    given (builtin: / s3:// as written, a local directory as an absolute path)."""
    if adapter_dir is not None:
        prov = loading.read_provenance(adapter_dir)
        return str(prov.get("base_model") or loading.checkpoint_parts(adapter_dir)[0])
    if ref.startswith(("builtin:", "s3://")):
        return ref
    return str(Path(ref).resolve())


def _build_model(base_dir: Path, adapter_dir: Path | None, cfg: TrainConfig, *, bf16: bool, distributed: bool):
    """(model with its trainable parameters set, tokenizer, a note for the log)."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = loading.load_tokenizer(adapter_dir if adapter_dir and (adapter_dir / "tokenizer_config.json").exists()
                                 else base_dir)
    # A LoRA run under bf16 keeps the frozen base in bf16 (half the memory, no per-step casts);
    # FSDP shards fp32 and casts while gathering. Full runs keep fp32 master weights.
    frozen_bf16 = bf16 and cfg.method == "lora" and not distributed
    dtype = torch.bfloat16 if frozen_bf16 else torch.float32
    try:
        net = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {base_dir}: {exc}") from None
    if cfg.method == "full":
        if adapter_dir is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, str(adapter_dir)).merge_and_unload()
        net.requires_grad_(True)
        return net, tok, "full fine-tuning" + (f" (from {adapter_dir.name} merged)" if adapter_dir else "")

    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:  # continued fine-tuning: the same adapter, trainable again
        net = PeftModel.from_pretrained(net, str(adapter_dir), is_trainable=True)
        lc = net.peft_config["default"]
        return net, tok, f"continuing the LoRA adapter of {adapter_dir} (r={lc.r} on {sorted(lc.target_modules)})"
    present = {name.rsplit(".", 1)[-1] for name, _ in net.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise ValueError(f"train.target_modules: none of {cfg.target_modules} exist in the model")
    n_layers = int(getattr(net.config, "num_hidden_layers", 0) or 0)
    layers = None
    if cfg.lora_layers and n_layers and cfg.lora_layers < n_layers:
        layers = list(range(n_layers - cfg.lora_layers, n_layers))
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        layers_to_transform=layers, task_type="CAUSAL_LM",
    )
    net = get_peft_model(net, lora)  # adapter weights stay fp32 (peft's autocast_adapter_dtype)
    where = f"top {len(layers)}" if layers else "all"
    return net, tok, f"LoRA r={cfg.lora_r} on {targets} ({where} layers)"


def _decoder_layers(net) -> list:
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and "DecoderLayer" in type(module[0]).__name__:
            return list(module)
    return []


def _shard(net, bf16: bool) -> None:
    """FSDP2: each decoder layer its own unit, then the rest; bf16 compute with fp32 reduction."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if torch.cuda.is_available():
        net.to(torch.device("cuda", torch.cuda.current_device()))
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for layer in _decoder_layers(net):
        fully_shard(layer, mp_policy=mp)
    fully_shard(net, mp_policy=mp)


def _barrier(dist: Dist) -> None:
    if dist.on:
        import torch.distributed as td

        td.barrier()


# ------------------------------------------------------------------------------------------- batches
class BatchPlan:
    """The order of micro-batches: a seeded stream of example indices (a fresh shuffle whenever it
    runs low, so batches are always full and epochs flow into each other). `length-grouped` sorts
    windows of GROUP_WINDOW micro-batches (at most one pass over the data) by length and shuffles
    the batches of a window; `random`
    and `packed` take the stream as it comes. Its state (the RNG and what is queued) goes into
    checkpoints, so a resumed run sees the same batches."""

    def __init__(self, lengths: list[int], size: int, mode: str, seed: int):
        self.lengths, self.size, self.mode = lengths, size, mode
        self.rng = random.Random(seed)
        self.stream: list[int] = []
        self.queue: list[list[int]] = []

    def _take(self, n: int) -> list[int]:
        while len(self.stream) < n:
            fresh = list(range(len(self.lengths)))
            self.rng.shuffle(fresh)
            self.stream.extend(fresh)
        taken, self.stream = self.stream[:n], self.stream[n:]
        return taken

    def next(self) -> list[int]:
        if not self.queue:
            if self.mode == "length-grouped":
                # A window never spans more than one pass over the data, so a batch holds no duplicates.
                n_batches = max(1, min(GROUP_WINDOW, len(self.lengths) // self.size))
                window = sorted(self._take(self.size * n_batches), key=lambda i: (-self.lengths[i], i))
                batches = [window[k : k + self.size] for k in range(0, len(window), self.size)]
                self.rng.shuffle(batches)
                self.queue = batches
            else:
                self.queue = [self._take(self.size)]
        return self.queue.pop(0)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "stream": self.stream, "queue": self.queue}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        version, internal, gauss = s["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.stream, self.queue = list(s["stream"]), [list(b) for b in s["queue"]]


def pad(batch, pad_id: int) -> dict[str, Any]:
    """Right-padded input ids, labels (-100 on pads) and attention mask."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def supports_response_loss(net) -> bool:
    """Whether `response_loss` computes exactly what the model's own loss does: a decoder body and
    an output projection, and no logit scaling or soft-capping after it."""
    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    cfg = base.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    return callable(getattr(base, "get_decoder", None)) and base.get_output_embeddings() is not None


def response_loss(net, inputs: dict[str, Any]):
    """The causal-LM loss (mean cross-entropy over the label tokens), with the output projection
    and the softmax over the vocabulary computed only where a label is: the prompt positions cost
    no logits (on the demo data about half of the tokens, and a batch x length x vocab fp32 tensor
    the model's own loss would materialise)."""
    import torch

    base = net.get_base_model() if hasattr(net, "get_base_model") else net
    labels = inputs["labels"]
    body_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = base.get_decoder()(**body_inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def pack(batch) -> dict[str, Any]:
    """Padding-free: the sequences side by side in one row, positions restarting at 0 for each.
    With no attention mask transformers reads the sequence boundaries from the positions (each
    sequence attends only to itself). Every sequence starts with a prompt token labelled -100, so
    no loss crosses a boundary."""
    import torch

    ids = [t for x, _ in batch for t in x]
    labels = [t for _, y in batch for t in y]
    pos = [p for x, _ in batch for p in range(len(x))]
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}


# --------------------------------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] | None = None

    def __post_init__(self):
        self.losses = list(self.losses or [])


def _fingerprint(ref: str, encoded, cfg: TrainConfig, model_cfg: ModelConfig, world: int) -> str:
    """What a checkpoint must match to be resumed: the starting model, the data, the config
    (less the knobs that do not change the result) and the number of processes."""
    h = hashlib.sha256()
    train = cfg.model_dump(exclude={"log_every", "checkpoint_every", "checkpoint_dir"})
    h.update(json.dumps([ref, train, model_cfg.model_dump(), world], sort_keys=True, default=str).encode())
    for ids, labels in encoded:
        h.update(json.dumps([ids, labels]).encode())
    return h.hexdigest()


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (`step-<n>` directories; partial ones never
    carry that name)."""
    if not root.is_dir():
        return None
    done = [(int(p.name[5:]), p) for p in root.glob("step-*") if p.name[5:].isdigit() and (p / "state.pt").exists()]
    return max(done)[1] if done else None


def _state_options(full_model: bool, **kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=not full_model, **kw)


def _save_checkpoint(
    root: Path, net, opt, sched, plan: BatchPlan, state: TrainState, fingerprint: str, dist: Dist
) -> None:
    """Write `step-<n>` atomically: into a temporary directory, renamed when complete; then drop
    older checkpoints. Every process writes its own RNG state; rank 0 the rest."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict

    full = not hasattr(net, "peft_config")
    model_sd, optim_sd = get_state_dict(net, opt, options=_state_options(full))
    tmp = root / f".tmp-step-{state.step}"
    if dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(dist)
    rng = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(rng, tmp / f"rng-{dist.rank}.pt")
    _barrier(dist)
    if dist.main:
        torch.save(
            {
                "fingerprint": fingerprint,
                "step": state.step,
                "tokens": state.tokens,
                "seconds": state.seconds,
                "losses": state.losses,
                "plan": plan.state_dict(),
                "model": model_sd,
                "optim": optim_sd,
                "sched": sched.state_dict(),
            },
            tmp / "state.pt.tmp",
        )
        os.replace(tmp / "state.pt.tmp", tmp / "state.pt")
        final = root / f"step-{state.step}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(dist)


def _load_checkpoint(
    path: Path, net, opt, sched, plan: BatchPlan, state: TrainState, fingerprint: str, dist: Dist
) -> bool:
    import torch
    from torch.distributed.checkpoint.state_dict import set_state_dict

    saved = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if saved.get("fingerprint") != fingerprint:
        return False
    full = not hasattr(net, "peft_config")
    set_state_dict(
        net,
        opt,
        model_state_dict=saved["model"],
        optim_state_dict=saved["optim"],
        options=_state_options(full, strict=False),
    )
    sched.load_state_dict(saved["sched"])
    plan.load_state_dict(saved["plan"])
    state.step, state.tokens, state.seconds = saved["step"], saved["tokens"], saved["seconds"]
    state.losses = list(saved["losses"])
    rng_file = path / f"rng-{dist.rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return True


# ---------------------------------------------------------------------------------------------- save
def _save_output(
    net,
    tok,
    out: Path,
    cfg: TrainConfig,
    prov: dict[str, Any],
    metrics: dict[str, Any],
    *,
    bf16: bool,
    base_ref: str,
    dist: Dist,
) -> None:
    """LoRA: the adapter (adapter_config.json + adapter_model.safetensors), the tokenizer and the
    provenance naming the base. Full: the whole model (bf16 when trained in bf16). The provenance
    is written last: a directory with it is complete."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    lora = hasattr(net, "peft_config")
    sd = get_model_state_dict(net, options=_state_options(not lora)) if dist.on else None
    if not dist.main:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / loading.PROVENANCE_FILE).unlink(missing_ok=True)
    if lora:
        net.save_pretrained(out, state_dict=sd, safe_serialization=True)
        _set_adapter_base(out, base_ref)
    elif sd is None:  # one process: the model itself
        if bf16:
            net.to(torch.bfloat16)
        net.save_pretrained(out, safe_serialization=True)
    else:  # sharded: a plain model from the gathered weights (tied weights stay tied)
        from transformers import AutoModelForCausalLM

        if bf16:
            sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(net.config)
        plain.load_state_dict(sd, assign=True, strict=False)
        plain.tie_weights()
        plain.generation_config = net.generation_config
        plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))  # with the loss history (a launcher logs it)
    loading._write_json(out / loading.PROVENANCE_FILE, prov)


def _set_adapter_base(out: Path, base_ref: str) -> None:
    """Name the base model by its reference in adapter_config.json (peft writes the local path)."""
    path = out / loading.ADAPTER_CONFIG
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = base_ref
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    import argparse

    from reset.config import load_config
    from reset.data.records import read_jsonl

    ap = argparse.ArgumentParser(
        prog="python -m reset.models.finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", required=True, help="a pipeline config file (its model and train sections)")
    ap.add_argument("--data", required=True, help="training examples (JSONL in the record schema)")
    ap.add_argument("--out", required=True, help="output directory (run again with the same one to resume)")
    ap.add_argument("--model", default="", help="model reference or checkpoint (default: model.base)")
    ap.add_argument("--section", default="train", choices=["train", "continued_train"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = ap.parse_args(argv)

    cfg = load_config(args.config, args.set)
    examples, _ = read_jsonl(args.data, Example)
    dist = init_distributed()
    try:
        metrics = finetune(
            args.model or cfg.model.base,
            examples,
            args.out,
            getattr(cfg, args.section),
            cfg.model,
            provenance={"stage": args.section, "command": "reset.models.finetune", "train_data": args.data},
            log=lambda m: print(m, flush=True),
        )
        if dist.main:
            print(json.dumps({k: v for k, v in metrics.items() if k != "loss_history"}), flush=True)
    finally:
        if dist.on:
            import torch.distributed as td

            td.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def loss_check(metrics: Mapping[str, Any], min_drop: float = 0.1) -> str:
    """Did the model learn? 'ok' when the final loss (mean of the last fifth of the steps) is at
    least `min_drop` (relative) below the first step's, else a warning with the figures."""
    first, final = float(metrics["first_loss"]), float(metrics["final_loss"])
    drop = (first - final) / first if first > 0 else 0.0
    verdict = "ok" if drop >= min_drop else "warning: the loss barely moved"
    return f"{verdict}: {first:.3f} -> {final:.3f} ({-drop:+.0%}) over {metrics['steps']} steps"
