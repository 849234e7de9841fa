"""Training engine on the tiny random Llama: precision, batching, adapters between steps, merging,
disk footprint, resume after SIGKILL, and two processes under torchrun (FSDP2 over gloo)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reset.config import DecodingSetting, GenerateConfig, ModelConfig, TrainConfig
from reset.data.records import write_jsonl
from reset.models import chat
from reset.models import loading as modeling
from reset.models.finetune import (
    BatchPlan,
    cpu_has_bf16,
    finetune,
    pack,
    pad,
    response_loss,
    supports_response_loss,
)
from reset.models.generation import hf

REPO = Path(__file__).resolve().parent.parent
BF16_CPU = cpu_has_bf16()


def _cfg(**kw) -> TrainConfig:
    base = dict(max_steps=12, batch_size=4, learning_rate=1e-2, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                warmup_ratio=0.0, log_every=100, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _quiet(_: str) -> None:
    pass


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _logits(model, tok, text="Describe the benefits of cycling."):
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.fixture(scope="module")
def examples(demo):
    return demo[0][:4] + demo[1][:4]


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, examples, tmp_path_factory):
    """A LoRA run at the default precision (bf16 on this CPU when it has avx512_bf16)."""
    out = tmp_path_factory.mktemp("lora") / "mtl"
    metrics = finetune(
        tiny_model_dir,
        examples,
        out,
        _cfg(max_steps=20, checkpoint_every=5),
        ModelConfig(max_length=192),
        provenance={"stage": "mtl"},
        log=_quiet,
    )
    return out, metrics


# ------------------------------------------------------------------------------------------ precision
def test_cpu_bf16_detection_reads_the_cpu_flags():
    assert cpu_has_bf16("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512bw\n")
    assert cpu_has_bf16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags\t\t: fpu sse avx2 avx512f avx512bw\n")  # bf16 only emulated: not counted


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
def test_bf16_and_fp32_losses_are_close_but_not_equal(tiny_model_dir, examples, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = finetune(
            tiny_model_dir,
            examples,
            tmp_path / precision,
            _cfg(precision=precision),
            ModelConfig(max_length=192),
            log=_quiet,
        )
    fp32, bf16 = runs["fp32"]["loss_history"], runs["bf16"]["loss_history"]
    assert fp32 != bf16  # bf16 really ran in lower precision
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= 0.03 * a
    assert abs(runs["bf16"]["final_loss"] - runs["fp32"]["final_loss"]) <= 0.02 * runs["fp32"]["final_loss"]
    assert json.loads((tmp_path / "bf16" / modeling.PROVENANCE_FILE).read_text())["precision"] == "bf16"


# ------------------------------------------------------------------------------------------- batching
def test_packed_batch_gives_the_padded_batch_loss(tiny_model_dir, examples):
    model, tok = modeling.load(tiny_model_dir)
    batch = [chat.encode_sft(tok, ex, ex.response, 192) for ex in examples[2:6]]
    assert len({len(ids) for ids, _ in batch}) > 1  # different lengths: the padded batch has pads
    with torch.no_grad():
        padded = model(**pad(batch, tok.pad_token_id), use_cache=False).loss
        packed = model(**pack(batch), use_cache=False).loss
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_response_only_logits_give_the_models_own_loss(tiny_model_dir, examples):
    from peft import LoraConfig, get_peft_model

    model, tok = modeling.load(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert supports_response_loss(model)
    batch = [chat.encode_sft(tok, ex, ex.response, 192) for ex in examples[:5]]
    for inputs in (pad(batch, tok.pad_token_id), pack(batch)):
        with torch.no_grad():
            torch.testing.assert_close(
                response_loss(model, inputs), model(**inputs, use_cache=False).loss, rtol=1e-5, atol=1e-5
            )


def test_length_grouped_plan_pads_less_and_sees_every_example_once_per_pass():
    import random

    rnd = random.Random(1)
    lengths = [rnd.randint(20, 300) for _ in range(256)]  # a pass is a whole number of windows
    waste = {}
    for mode in ("random", "length-grouped"):
        plan = BatchPlan(lengths, 8, mode, seed=0)
        batches = [plan.next() for _ in range(len(lengths) // 8 * 3)]  # three passes
        assert all(len(set(b)) == len(b) == 8 for b in batches)
        for k in range(3):
            one_pass = [i for b in batches[k * 32 : (k + 1) * 32] for i in b]
            assert sorted(one_pass) == list(range(256))
        waste[mode] = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert waste["length-grouped"] < 0.3 * waste["random"]


def test_batch_plan_state_round_trips():
    a = BatchPlan([5, 9, 2, 7, 3, 8, 1, 4, 6, 10], 2, "length-grouped", seed=3)
    for _ in range(3):
        a.next()
    b = BatchPlan([5, 9, 2, 7, 3, 8, 1, 4, 6, 10], 2, "length-grouped", seed=99)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # JSON-safe, like a checkpoint
    assert [a.next() for _ in range(12)] == [b.next() for _ in range(12)]


# ------------------------------------------------------------------------------ adapters between steps
def test_a_lora_run_writes_the_adapter_and_a_base_reference(adapter_run, tiny_model_dir):
    out, metrics = adapter_run
    assert metrics["final_loss"] < metrics["first_loss"]
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", modeling.PROVENANCE_FILE} <= names
    assert "model.safetensors" not in names and "checkpoints" not in names
    prov = modeling.read_provenance(out)
    assert prov["base_model"] == str(tiny_model_dir.resolve()) and prov["method"] == "lora"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == prov["base_model"]
    base, adapter = modeling.checkpoint_parts(out)
    assert (base, adapter) == (tiny_model_dir.resolve(), out)
    assert modeling.checkpoint_parts(tiny_model_dir) == (tiny_model_dir, None)


def test_adapter_checkpoint_loads_and_generates(adapter_run, tiny_model_dir, examples):
    out, _ = adapter_run
    model, tok = modeling.load(out)
    base, _ = modeling.load(tiny_model_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged in memory
    assert not torch.allclose(_logits(model, tok), _logits(base, tok))  # the adapter changed the model
    cfg = GenerateConfig(grid=[DecodingSetting(temperature=0.0)], max_new_tokens=6, batch_size=4, backend="hf")
    result = hf.generate(out, examples[:3], cfg, ModelConfig(), model_name="mtl", log=_quiet)
    assert len(result.candidates) == 3 and all(c.model == "mtl" for c in result.candidates)


def test_merge_to_writes_a_plain_model_with_the_adapters_outputs(adapter_run, tmp_path):
    out, _ = adapter_run
    merged = modeling.merge_to(out, tmp_path / "merged", dtype=torch.float32)
    assert not modeling.is_adapter_dir(merged) and (merged / "model.safetensors").exists()
    assert modeling.checkpoint_parts(merged) == (merged, None)
    a, tok = modeling.load(out)
    b, _ = modeling.load(merged)
    torch.testing.assert_close(_logits(b, tok), _logits(a, tok), rtol=1e-4, atol=1e-4)
    # By default the export takes the training precision: bf16 for a bf16 run (half the bytes).
    if modeling.read_provenance(out)["precision"] == "bf16":
        default = modeling.merge_to(out, tmp_path / "default")
        assert json.loads((default / "config.json").read_text())["dtype"] == "bfloat16"
        assert (default / "model.safetensors").stat().st_size < 0.6 * (merged / "model.safetensors").stat().st_size


def test_continued_finetuning_trains_the_same_adapter(adapter_run, tiny_model_dir, examples, tmp_path):
    from safetensors.torch import load_file

    mtl, mtl_metrics = adapter_run
    out = tmp_path / "reset"
    metrics = finetune(
        mtl, examples, out, _cfg(max_steps=4, lora_r=4, learning_rate=5e-3), ModelConfig(max_length=192), log=_quiet
    )
    # It starts where the MTL run ended (its adapter is loaded), not from the base model's loss.
    assert metrics["first_loss"] < 0.8 * mtl_metrics["first_loss"]
    before, after = load_file(mtl / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()  # the same adapter (r=8 from the MTL run, not the r=4 asked)
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert modeling.checkpoint_parts(out) == (tiny_model_dir.resolve(), out)  # base + one adapter


def test_full_finetuning_saves_a_whole_model(tiny_model_dir, examples, tmp_path):
    out = tmp_path / "full"
    metrics = finetune(
        tiny_model_dir,
        examples,
        out,
        _cfg(method="full", learning_rate=1e-3, max_steps=6),
        ModelConfig(max_length=192),
        log=_quiet,
    )
    assert metrics["trainable_params"] == sum(p.numel() for p in modeling.load(tiny_model_dir)[0].parameters())
    assert not modeling.is_adapter_dir(out) and modeling.checkpoint_parts(out) == (out, None)
    model, tok = modeling.load(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    stored = json.loads((out / "config.json").read_text())["dtype"]
    assert stored == ("bfloat16" if modeling.read_provenance(out)["precision"] == "bf16" else "float32")


def test_disk_footprint_of_a_tiny_run(adapter_run, tmp_path):
    """What a fine-tuning step writes: the adapter, the tokenizer and small JSON files; a merged
    model (what every step wrote before) is several times larger even on this 2-layer model."""
    out, _ = adapter_run
    written = _dir_bytes(out)
    merged = _dir_bytes(modeling.merge_to(out, tmp_path / "merged", dtype=torch.float32))
    print(f"tiny LoRA run writes {written:,} bytes; a merged fp32 copy is {merged:,} bytes")
    assert written < 0.4 * merged
    assert not any(p.name.startswith(".tmp") for p in out.rglob("*"))


# --------------------------------------------------------------------------------- resume and torchrun
def _cli_setup(tmp_path: Path, tiny_model_dir: Path, examples, train: dict) -> tuple[Path, Path]:
    data = tmp_path / "train.jsonl"
    write_jsonl(data, examples)
    cfg = tmp_path / "cfg.json"  # JSON is YAML
    cfg.write_text(json.dumps({"model": {"base": str(tiny_model_dir), "max_length": 192}, "train": train}))
    return cfg, data


def _env() -> dict[str, str]:
    env = {**os.environ, "RESET_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RESET_PROGRESS", None)
    return env


def _cli(cfg: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "reset.models.finetune", "--config", str(cfg), "--data", str(data), "--out", str(out)]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in sessions of
    their own, so killing its process group would leave them running)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=30)


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command; on timeout it and everything it started are killed, so nothing is left running."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:4]} did not finish in {timeout}s:\n{(out + err)[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _metrics_line(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


def test_sigkill_then_run_again_resumes_and_ends_like_an_uninterrupted_run(tiny_model_dir, examples, tmp_path):
    train = {
        "max_steps": 60,
        "batch_size": 4,
        "learning_rate": 0.005,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "warmup_ratio": 0.1,
        "log_every": 100,
        "checkpoint_every": 5,
    }
    cfg, data = _cli_setup(tmp_path, tiny_model_dir, examples, train)
    ref = _run(_cli(cfg, data, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    uninterrupted = _metrics_line(ref.stdout)

    out = tmp_path / "killed"
    # The fault, injected: the process SIGKILLs itself right after its second checkpoint (step 10 of
    # 60) is complete; a kill from outside raced the end of so short a run on a busy machine.
    killer = (
        "import os, signal, sys\n"
        "import reset.models.finetune as F\n"
        "save, saved = F._save_checkpoint, []\n"
        "def _save(*a, **k):\n"
        "    save(*a, **k)\n"
        "    saved.append(1)\n"
        "    if len(saved) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "F._save_checkpoint = _save\n"
        "sys.exit(F.main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", killer, *_cli(cfg, data, out)[3:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / modeling.PROVENANCE_FILE).exists()  # nothing looks complete

    again = _run(_cli(cfg, data, out))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _metrics_line(again.stdout)
    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == 60
    assert "resuming from" in again.stdout
    assert abs(resumed["final_loss"] - uninterrupted["final_loss"]) <= 0.01 * uninterrupted["final_loss"]
    assert not (out / "checkpoints").exists()


class _Stop(Exception):
    """Raised from on_step: the run stops there, as a killed process would, and leaves its checkpoints."""


def _steps_seen(stop_at: int | None = None) -> tuple[list[int], Callable[[int, float], None]]:
    seen: list[int] = []

    def on_step(step: int, _loss: float) -> None:
        seen.append(step)
        if stop_at is not None and step + 1 == stop_at:
            raise _Stop

    return seen, on_step


def test_checkpoint_of_another_configuration_is_not_resumed(tiny_model_dir, examples, tmp_path):
    """A run stopped after its checkpoint at step 3 leaves it behind; a run of another configuration
    (another learning rate) on the same checkpoint directory starts at step 0, and a run of the same
    configuration (the positive control) resumes at step 3."""
    root = tmp_path / "ckpt"
    cfg = _cfg(max_steps=6, checkpoint_every=3, checkpoint_dir=str(root))
    _, stop_at_4 = _steps_seen(stop_at=4)
    with pytest.raises(_Stop):
        finetune(tiny_model_dir, examples, tmp_path / "a", cfg, ModelConfig(max_length=192), log=_quiet,
                 on_step=stop_at_4)
    assert [p.name for p in root.iterdir()] == ["step-3"]  # the stopped run's checkpoint is there

    # another configuration: stopped before its own first checkpoint, so step-3 stays the stopped run's
    other_cfg = cfg.model_copy(update={"learning_rate": 5e-3})
    seen, stop_at_2 = _steps_seen(stop_at=2)
    logs: list[str] = []
    with pytest.raises(_Stop):
        finetune(tiny_model_dir, examples, tmp_path / "b", other_cfg, ModelConfig(max_length=192), log=logs.append,
                 on_step=stop_at_2)
    assert seen == [0, 1]
    assert [x for x in logs if "another configuration" in x] and not [x for x in logs if "resuming" in x]

    # the same configuration resumes where the stopped run's checkpoint ends
    seen, count = _steps_seen()
    metrics = finetune(tiny_model_dir, examples, tmp_path / "c", cfg, ModelConfig(max_length=192), log=_quiet,
                       on_step=count)
    assert seen == [3, 4, 5] and metrics["resumed_from_step"] == 3
    assert not root.exists()  # removed when the step ended


def test_torchrun_two_processes_train_with_fsdp_and_save_a_loadable_adapter(tiny_model_dir, examples, tmp_path):
    train = {
        "max_steps": 8,
        "batch_size": 2,
        "learning_rate": 0.01,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "warmup_ratio": 0.0,
        "log_every": 4,
        "checkpoint_every": 4,
    }
    cfg, data = _cli_setup(tmp_path, tiny_model_dir, examples, train)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *_cli(cfg, data, out)[1:],
    ]
    run = _run(cmd)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    metrics = _metrics_line(run.stdout)
    assert metrics["final_loss"] < metrics["first_loss"]
    assert "x 2 processes" in run.stdout
    prov = modeling.read_provenance(out)
    assert prov["world_size"] == 2 and prov["base_model"] == str(tiny_model_dir.resolve())
    model, tok = modeling.load(out)
    base, _ = modeling.load(tiny_model_dir)
    assert not torch.allclose(_logits(model, tok), _logits(base, tok))
    assert not (out / "checkpoints").exists()
