"""The generation seam: the hf backend, the vllm backend against the real vLLM CPU build (its own
venv, `make vllm`), hf/vllm agreement on greedy outputs, the auto choice and its fallback."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from reset.config import DecodingSetting, GenerateConfig, ModelConfig
from reset.data.demo import build_demo
from reset.models import chat
from reset.models.generation import choose_backend, run, vllm_server
from reset.models.generation import vllm_backend as vllm
from reset.models.loading import load_tokenizer, merge_to, resolve_model

from .conftest import REPO, wait_for

GRID = [DecodingSetting(temperature=0.0), DecodingSetting(temperature=0.7, top_p=0.9),
        DecodingSetting(temperature=1.0, top_p=0.95)]


def _vllm_python() -> str:
    python = os.environ.get("RESET_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if not os.path.exists(python):
        pytest.fail(f"no vLLM environment at {python}: run `make vllm` (make test does)")
    return python


@pytest.fixture(scope="module")
def vllm_tiny_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random Llama with head_dim 64 (vLLM's CPU attention has no kernel for the builtin's 16)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-vllm")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig.from_pretrained(tiny_model_dir)
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = 128, 2, 1, 256
    cfg.head_dim = 64
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def examples():
    ifs, cds = build_demo(seed=3, n_instruction=6, n_grounded=6)
    return ifs + cds


def _check_candidates(cands, examples, cfg: GenerateConfig, backend: str) -> None:
    per_setting = Counter(c.id.split("/")[-1].split("s")[0] for c in cands)
    assert per_setting == {"g0": len(examples), "g1": len(examples) * cfg.samples_per_setting,
                           "g2": len(examples) * cfg.samples_per_setting}
    assert len({c.id for c in cands}) == len(cands)
    order = [ex.id for ex in examples]
    assert [c.example_id for c in cands] == sorted((c.example_id for c in cands), key=order.index)
    for c in cands:
        si = int(c.id.split("/g")[1].split("s")[0])
        assert c.decoding["backend"] == backend and c.decoding["max_new_tokens"] == cfg.max_new_tokens
        assert c.decoding["temperature"] == GRID[si].temperature
        assert c.decoding["strategy"] == ("greedy" if si == 0 else "sample")
        assert isinstance(c.decoding["seed"], int) and isinstance(c.text, str)
        c.validate()


def test_hf_backend_writes_the_candidate_schema(tiny_model_dir, examples):
    cfg = GenerateConfig(grid=GRID, samples_per_setting=2, max_new_tokens=8, batch_size=4, backend="hf")
    result = run(tiny_model_dir, examples, cfg, ModelConfig(max_prompt_length=96), model_name="m", log=lambda s: None)
    _check_candidates(result.candidates, examples, cfg, "hf")
    assert result.stats["backend"] == "hf" and result.stats["output_tokens"] > 0


def test_prompts_are_cut_before_they_are_tokenized_in_full(tiny_model_dir, examples):
    """A 5 MB context is cut by characters first: the ids end like the uncut prompt's and fit."""
    tok = load_tokenizer(tiny_model_dir)
    huge = examples[-1].__class__(**{**examples[-1].__dict__, "context": "word " * 1_000_000 + examples[-1].context})
    ids, cut = chat.prompt_ids(tok, huge, 64)
    normal, _ = chat.prompt_ids(tok, examples[-1], 64)
    assert cut and len(ids) == 64 and ids[-20:] == normal[-20:]


def test_auto_falls_back_to_hf_with_a_note_when_no_vllm(tiny_model_dir, examples, monkeypatch, tmp_path):
    monkeypatch.setenv("RESET_VLLM_PYTHON", str(tmp_path / "missing-python"))
    monkeypatch.setattr(vllm_server, "PROJECT_ROOT", tmp_path)  # no .venv-vllm there either
    cfg = GenerateConfig(grid=GRID[:1], max_new_tokens=4, backend="auto")
    assert choose_backend(cfg)[0] == "hf"
    notes: list[str] = []
    result = run(tiny_model_dir, examples[:2], cfg, ModelConfig(max_prompt_length=96), log=notes.append)
    assert result.stats["backend"] == "hf" and any("not vLLM" in n for n in notes)
    with pytest.raises(vllm.VLLMUnavailable, match="make vllm"):
        choose_backend(cfg.model_copy(update={"backend": "vllm"}))


def test_a_head_size_without_a_vllm_cpu_kernel_goes_to_hf_before_any_engine_starts(tiny_model_dir, examples,
                                                                                     tmp_path):
    """The builtin tiny Llama's head_dim 16 has no kernel in vLLM's CPU attention: `auto` says so
    and uses hf without starting a worker (the engine used to fail only after starting, ~10 s);
    `vllm` is an error naming the config file and the field."""
    python = tmp_path / "python"  # would record being started; it must not be
    python.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\nexit 3\n")
    python.chmod(0o755)
    cfg = GenerateConfig(grid=GRID[:1], max_new_tokens=4, backend="auto", vllm_python=str(python))
    assert choose_backend(cfg)[0] == "vllm"  # an environment is there: only the model rules it out
    notes: list[str] = []
    result = run(tiny_model_dir, examples[:2], cfg, ModelConfig(max_prompt_length=96), log=notes.append)
    assert result.stats["backend"] == "hf" and "head_dim 16" in result.stats["fallback_reason"]
    assert any("falling back to transformers" in n and "config.json" in n for n in notes), notes
    with pytest.raises(vllm.VLLMUnavailable, match=r"config.json: head_dim 16 has no vLLM CPU attention kernel"):
        run(tiny_model_dir, examples[:2], cfg.model_copy(update={"backend": "vllm"}), ModelConfig(max_prompt_length=96),
            log=lambda s: None)
    assert not (tmp_path / "started").exists()
    assert vllm.cpu_unsupported(tiny_model_dir) and not vllm.cpu_unsupported(tmp_path)  # no config: not ruled out


def test_a_cpu_build_of_torch_means_no_gpu_without_importing_torch():
    """gpu_visible knows a CPU build of torch by its version (`+cpu`): a step that sends its prompts
    to the vLLM worker never imports torch (1.6 s)."""
    import subprocess
    import sys

    import torch

    probe = ("import sys; from reset.models.generation.vllm_server import gpu_visible; "
             "print(gpu_visible(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    cpu_build = torch.__version__.endswith("+cpu")
    assert out.stdout.split() == ([str(torch.cuda.is_available()), str(not cpu_build)])
    assert vllm.gpu_visible() == torch.cuda.is_available()  # torch imported: asked directly


@pytest.mark.integration
def test_vllm_backend_schema_counts_and_seeded_reproducibility(vllm_tiny_dir, examples):
    cfg = GenerateConfig(grid=GRID, samples_per_setting=2, max_new_tokens=8, backend="vllm",
                         vllm_python=_vllm_python(), vllm_kv_cache_gb=1)
    mcfg = ModelConfig(max_prompt_length=96)
    first = run(vllm_tiny_dir, examples, cfg, mcfg, model_name="m", log=lambda s: None)
    _check_candidates(first.candidates, examples, cfg, "vllm")
    assert first.stats["backend"] == "vllm" and first.stats["output_tokens"] > 0
    assert first.stats["engine_start_s"] > 0 and first.stats["generate_s"] > 0
    again = run(vllm_tiny_dir, examples, cfg, mcfg, model_name="m", log=lambda s: None)
    assert [(c.id, c.text, c.decoding["seed"]) for c in again.candidates] == \
           [(c.id, c.text, c.decoding["seed"]) for c in first.candidates]
    # sampling is really sampling: the two samples of one request differ somewhere
    by_req: dict[str, list[str]] = {}
    for c in first.candidates:
        if c.decoding["strategy"] == "sample":
            by_req.setdefault(c.id.rsplit("s", 1)[0], []).append(c.text)
    assert any(len(set(texts)) > 1 for texts in by_req.values())


@pytest.mark.integration
def test_hf_and_vllm_agree_on_greedy_outputs(cache_dir, examples, capsys):
    """The same model, prompts and greedy decoding in fp32 through both backends: the share of
    identical outputs is reported; numerics differ (kernels, batching), so not every one matches."""
    model = resolve_model("builtin:smollm2-135m-instruct", str(cache_dir))
    mcfg = ModelConfig(max_prompt_length=256)
    base = GenerateConfig(grid=GRID[:1], max_new_tokens=24, batch_size=12)
    hf = run(model, examples, base.model_copy(update={"backend": "hf"}), mcfg, log=lambda s: None)
    vl = run(model, examples, base.model_copy(update={"backend": "vllm", "vllm_python": _vllm_python(),
                                                       "vllm_cpu_dtype": "float32", "vllm_kv_cache_gb": 1}),
             mcfg, log=lambda s: None)
    pairs = list(zip(hf.candidates, vl.candidates, strict=True))
    assert all(a.id == b.id for a, b in pairs)
    exact = sum(a.text == b.text for a, b in pairs) / len(pairs)
    prefix = sum(a.text[:20] == b.text[:20] for a, b in pairs) / len(pairs)
    with capsys.disabled():
        print(f"\n[hf vs vllm, fp32 greedy, {len(pairs)} prompts] identical {exact:.2f}, "
              f"same first 20 chars {prefix:.2f}")
    assert prefix >= 0.75 and exact >= 0.5


def _adapter(base_dir, out, seed: int):
    """A LoRA adapter with random (non-zero) weights on `base_dir`, saved as fine-tuning saves one."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)  # big enough to change greedy outputs of a random model
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (out / "reset_provenance.json").write_text(json.dumps({"base_model": str(base_dir)}))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("lora", ["serve", "merge"])
def test_vllm_generates_for_the_base_and_its_adapters(vllm_tiny_dir, examples, tmp_path, lora):
    """Evaluation's case: base + two LoRA adapters, served from one engine (a GPU's default) or
    each merged into a copy of the base and swapped into the one engine's weights in place (a
    CPU's default); either way each adapter's greedy outputs match transformers with the adapter
    merged (fp32)."""
    from reset.models.generation import run_many

    models = {
        "base": str(vllm_tiny_dir),
        "a": str(_adapter(vllm_tiny_dir, tmp_path / "a", 1)),
        "b": str(_adapter(vllm_tiny_dir, tmp_path / "b", 2)),
    }
    cfg = GenerateConfig(
        grid=GRID[:1],
        max_new_tokens=8,
        backend="vllm",
        vllm_python=_vllm_python(),
        vllm_cpu_dtype="float32",
        vllm_kv_cache_gb=1,
        vllm_lora=lora,
    )
    mcfg = ModelConfig(max_prompt_length=96)
    logs: list[str] = []
    out = run_many(models, examples, cfg, mcfg, log=logs.append)
    assert all(g.stats["models_in_engine"] == 3 for g in out.values())
    assert not any("merged into a copy" in line for line in logs)  # merged as the weights load: no copy
    assert sum("weights swapped" in line for line in logs) == (2 if lora == "merge" else 0)
    # one adapter alone, under run()'s default model name "": still the adapter, not the base
    alone = run(models["a"], examples, cfg, mcfg, log=lambda s: None)
    assert [c.text for c in alone.candidates] == [c.text for c in out["a"].candidates]
    texts = {name: [c.text for c in g.candidates] for name, g in out.items()}
    assert texts["a"] != texts["base"] and texts["b"] != texts["a"]
    ref = run(models["a"], examples, cfg.model_copy(update={"backend": "hf"}), mcfg, log=lambda s: None)
    same = sum(x == y for x, y in zip(texts["a"], [c.text for c in ref.candidates], strict=True)) / len(examples)
    assert same >= 0.75, same
    if lora == "merge":  # merged in the engine's worker = peft's merge written out and loaded
        copy = merge_to(models["b"], tmp_path / "b-merged")
        assert [c.text for c in run(copy, examples, cfg, mcfg, log=lambda s: None).candidates] == texts["b"]


@pytest.fixture(scope="module")
def tied_pair(vllm_tiny_dir, tmp_path_factory):
    """A tiny model with tied input/output embeddings (as SmolLM2 has) and a "full fine-tune" of it:
    every weight moved, the shared embedding included."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(vllm_tiny_dir)
    base_out, ft_out = tmp_path_factory.mktemp("tied-base"), tmp_path_factory.mktemp("tied-ft")
    torch.manual_seed(1)
    model = LlamaForCausalLM.from_pretrained(vllm_tiny_dir, tie_word_embeddings=True)
    model.tie_weights()
    model.save_pretrained(base_out)
    tok.save_pretrained(base_out)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp(min=1e-3) * 0.5)
    model.save_pretrained(ft_out)
    tok.save_pretrained(ft_out)
    return base_out, ft_out


@pytest.mark.integration
def test_weights_swapped_in_place_sample_what_their_own_engine_samples(tied_pair, examples):
    """Two checkpoints of one architecture share an engine: the second is loaded into it in place.
    Its seeded samples and greedy outputs equal those of an engine started on it, also when the
    checkpoint moves the tied embedding (vLLM's CPU build keeps a packed copy of a tied head that
    reload_weights alone leaves stale)."""
    from reset.models.generation import run_many

    base, ft = tied_pair
    assert vllm.engine_key(base) == vllm.engine_key(ft)
    cfg = GenerateConfig(
        grid=GRID,
        samples_per_setting=2,
        max_new_tokens=8,
        backend="vllm",
        vllm_python=_vllm_python(),
        vllm_kv_cache_gb=1,
    )
    mcfg = ModelConfig(max_prompt_length=96)
    logs: list[str] = []
    both = run_many({"base": str(base), "ft": str(ft)}, examples, cfg, mcfg, log=logs.append)
    assert all(g.stats["models_in_engine"] == 2 for g in both.values())
    assert sum("weights swapped" in line for line in logs) == 1
    alone = run(ft, examples, cfg, mcfg, model_name="ft", log=lambda s: None)
    swapped = [(c.id, c.text) for c in both["ft"].candidates]
    assert swapped == [(c.id, c.text) for c in alone.candidates]
    assert [c.text for c in both["base"].candidates] != [c.text for c in both["ft"].candidates]


def test_engine_key_separates_architectures_and_tokenizers(tied_pair, tmp_path):
    import json
    import shutil

    base, ft = tied_pair
    assert vllm.engine_key(base) == vllm.engine_key(ft)
    deeper = tmp_path / "deeper"
    shutil.copytree(ft, deeper)
    config = json.loads((deeper / "config.json").read_text())
    config["num_hidden_layers"] += 1
    config["_name_or_path"] = "elsewhere"  # not a difference that matters
    (deeper / "config.json").write_text(json.dumps(config))
    assert vllm.engine_key(deeper) != vllm.engine_key(ft)
    config["num_hidden_layers"] -= 1
    (deeper / "config.json").write_text(json.dumps(config))
    assert vllm.engine_key(deeper) == vllm.engine_key(ft)
    other = tmp_path / "other-tok"
    shutil.copytree(ft, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["local_files_only"] = not cfg.get("local_files_only", False)  # how it was loaded: the same tokenizer
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert vllm.engine_key(other) == vllm.engine_key(ft)
    cfg["eos_token"] = "<another>"
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert vllm.engine_key(other) != vllm.engine_key(ft)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="config.json"):
        vllm.engine_key(tmp_path / "empty")


@pytest.mark.integration
def test_one_engine_server_serves_consecutive_steps(tied_pair, examples, tmp_path, monkeypatch):
    """A local run's vLLM worker: started as `python -m pipelines run` starts it, it serves one
    step's checkpoint and the next step's from one engine (the second's weights swapped in), with
    the samples a step's own worker gives; an engine idle for generate.vllm_engine_keep_s is freed
    and the next request starts one; once the server is gone, a step starts its own worker and
    says so."""
    from pipelines.local_runs import local_engine_server
    from reset.config import PipelineConfig

    base, ft = tied_pair
    cfg = GenerateConfig(
        grid=GRID,
        samples_per_setting=2,
        max_new_tokens=8,
        backend="vllm",
        vllm_python=_vllm_python(),
        vllm_kv_cache_gb=1,
        vllm_engine_keep_s=6,
    )
    mcfg = ModelConfig(max_prompt_length=96)
    own = run(ft, examples, cfg, mcfg, model_name="ft", log=lambda s: None)
    pcfg = PipelineConfig.model_validate(
        {
            "model": {"base": str(base), "max_prompt_length": 96},
            "generate": cfg.model_dump(),
            "evaluate": {"max_new_tokens": 6},
        }
    )
    server = local_engine_server(pcfg, tmp_path / "vllm")
    assert server is not None
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        logs: list[str] = []
        first = run(ft, examples, cfg, mcfg, model_name="ft", log=logs.append)
        second = run(
            base, examples, cfg.model_copy(update={"max_new_tokens": 6}), mcfg, model_name="b", log=logs.append
        )
        assert not first.stats["engine_reused"] and second.stats["engine_reused"], logs
        assert sum("served by the run's engine server" in line for line in logs) == 2
        assert [(c.id, c.text) for c in first.candidates] == [(c.id, c.text) for c in own.candidates]
        assert second.candidates and all(c.decoding["max_new_tokens"] == 6 for c in second.candidates)
        wait_for("the idle engine to be freed", lambda: "engine freed after 6s idle" in server.log_path.read_text(), 30)
        third = run(ft, examples, cfg, mcfg, model_name="ft", log=logs.append)
        assert not third.stats["engine_reused"]
        assert [c.text for c in third.candidates] == [c.text for c in own.candidates]
        log_text = server.log_path.read_text()
        assert "serving on" in log_text and log_text.count("(engine reused)") == 1
        assert log_text.count("engine freed after 6s idle") >= 1
    finally:
        server.stop()
    assert server.proc.poll() is not None and not server.socket.exists()
    logs = []
    again = run(ft, examples, cfg, mcfg, model_name="ft", log=logs.append)  # the env still names the server
    assert any("starting a worker" in line for line in logs), logs
    assert [c.text for c in again.candidates] == [c.text for c in own.candidates]


def test_no_engine_server_where_the_steps_would_not_use_one(tmp_path):
    from pipelines.local_runs import local_engine_server
    from reset.config import PipelineConfig

    for sections in (
        {"generate": {"backend": "hf"}, "evaluate": {"backend": "hf"}},
        {"generate": {"vllm_engine_server": False}},
    ):
        assert local_engine_server(PipelineConfig.model_validate(sections), tmp_path / "vllm") is None
    assert not (tmp_path / "vllm").exists()
