"""Run every benchmark in turn and print their tables (`make bench`).

    .venv/bin/python bench/run_all.py

See docs/bench.md for the figures measured on the development machine.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ("Offline judges (candidates/s)", ["judges_bench.py", "--embedding"]),
    ("LLM judge vs a 50 ms server: concurrency 32 / sequential", ["llm_judge_bench.py"]),
    ("LLM judge vs vLLM (CPU): judge / saturation", ["vllm_bench.py"]),
    ("Generation: the generate step vs vLLM's raw engine vs transformers (tokens/s)",
     ["generate_bench.py", "--config", str(HERE / "demo_before.yaml")]),
    ("vLLM engine: a new engine vs swapping weights into a running one", ["engine_bench.py"]),
    ("Fine-tuning: ours vs TRL SFTTrainer (tokens/s, held-out loss, peak memory)", ["train_bench.py"]),
    ("Mix step: 1M rows streamed vs read + json.loads (wall, CPU, peak RSS)", ["mix_bench.py"]),
]

if __name__ == "__main__":
    for title, cmd in RUNS:
        print(f"\n## {title}\n", flush=True)
        out = subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], capture_output=True, text=True)
        print("\n".join(ln for ln in out.stdout.splitlines() if ln.startswith("|")) or out.stderr[-2000:])
