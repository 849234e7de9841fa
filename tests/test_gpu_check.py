"""bench/gpu_check.py, the GPU check, on its CPU path at a tiny shape: it builds the model from the
shape's config, trains LoRA (the adapters only) and all weights, generates, and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"


def test_cpu_path_trains_lora_and_full_and_generates(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--device", "cpu", "--steps", "2",
                           "--warmup", "1", "--batch", "2", "--seq", "16", "--prompts", "2", "--prompt-len", "4",
                           "--new-tokens", "5", "--json", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert set(rows) == {"lora", "full", "hf"}  # no vLLM in this environment: its row left out, said so
    assert "vllm: not installed" in proc.stderr
    # LoRA r16 on the seven projections of both layers: r * (in + out) per projection (hidden 128,
    # one KV head of 64, MLP 256), and nothing else trainable
    per_layer = 16 * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 256) * 3)
    assert rows["lora"]["trainable"] == 2 * per_layer
    # full fine-tuning trains every weight (embeddings tied to the output head: counted once)
    assert rows["full"]["trainable"] == res["params"] + 512 * 128
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["tflops"] > 0
    assert rows["hf"]["tokens"] == 2 * 5  # every sample exactly --new-tokens long
    assert "| lora |" in proc.stdout and "| full |" in proc.stdout


def test_asks_for_the_cpu_flag_without_a_gpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "--device cpu" in proc.stderr
