"""The raw vLLM offline engine on given prompt texts: the baseline of bench/generate_bench.py.

Runs in vLLM's environment (`.venv-vllm/bin/python bench/vllm_raw.py IN.json OUT.json`), with the
settings the project's vllm backend uses on a CPU (bf16, eager), no project code at all.
IN: {"model": dir, "engine": {LLM kwargs}, "prompts": [text, ...],
     "params": [{n, temperature, top_p, max_tokens, seed}, ...]}
OUT: {"engine_start_s", "generate_s", "output_tokens"}
"""

import json
import sys
import time

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    t0 = time.monotonic()
    llm = LLM(model=spec["model"], **spec["engine"])
    start = time.monotonic() - t0
    params = [SamplingParams(**p) for p in spec["params"]]
    t1 = time.monotonic()
    outs = llm.generate(spec["prompts"], params, use_tqdm=False)
    gen = time.monotonic() - t1
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    with open(sys.argv[2], "w") as fh:
        json.dump({"engine_start_s": start, "generate_s": gen, "output_tokens": tokens}, fh)
