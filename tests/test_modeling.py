"""Model handling, fine-tuning and generation on a tiny random Llama (real forward passes)."""

from __future__ import annotations

import json

import pytest
import torch

from reset.config import DecodingSetting, GenerateConfig, ModelConfig, TrainConfig
from reset.models import chat
from reset.models import loading as modeling
from reset.models.finetune import finetune
from reset.models.generation import generate


def test_tiny_model_is_built_offline_and_cached(tiny_model_dir, cache_dir):
    assert (tiny_model_dir / "model.safetensors").exists()
    assert (tiny_model_dir / "tokenizer.json").exists()
    assert modeling.read_provenance(tiny_model_dir)["random_init"] is True
    # Resolving again returns the cached directory without rebuilding it.
    mtime = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    assert modeling.resolve_model("builtin:tiny-llama", str(cache_dir)) == tiny_model_dir
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_unknown_and_missing_models_name_the_reference(tmp_path):
    with pytest.raises(modeling.ModelError, match="builtin:nope"):
        modeling.resolve_model("builtin:nope", str(tmp_path))
    with pytest.raises(modeling.ModelError, match="no-such-dir"):
        modeling.resolve_model(str(tmp_path / "no-such-dir"), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(modeling.ModelError, match="config.json"):
        modeling.resolve_model(str(tmp_path / "empty"), str(tmp_path))


def test_a_generic_tokenizer_loads_as_autotokenizer_loads_it_without_importing_torch(tiny_model_dir, demo, tmp_path):
    """load_tokenizer takes the class tokenizer_config.json names when it is the generic one (what
    AutoTokenizer picks, without its ~4 s import of the model registry and torch): same class, ids
    and chat prompt; a model-specific class still goes through AutoTokenizer."""
    import shutil
    import subprocess
    import sys

    from transformers import AutoTokenizer

    ours, auto = modeling.load_tokenizer(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(ours) is type(auto) and type(ours).__name__ == "TokenizersBackend"
    for ex in demo[0][:3] + demo[1][:3]:
        assert chat.prompt_ids(ours, ex, 512) == chat.prompt_ids(auto, ex, 512)
        assert ours(ex.response)["input_ids"] == auto(ex.response)["input_ids"]
    probe = ("import sys; from reset.models.loading import load_tokenizer; "
             f"load_tokenizer({str(tiny_model_dir)!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    specific = tmp_path / "specific"
    shutil.copytree(tiny_model_dir, specific)
    cfg = json.loads((specific / "tokenizer_config.json").read_text())
    (specific / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "LlamaTokenizerFast"}))
    assert type(modeling.load_tokenizer(specific)).__name__ == type(AutoTokenizer.from_pretrained(specific)).__name__ \
        == "LlamaTokenizer"


def test_sft_labels_cover_the_response_only(tiny_model_dir, demo):
    _, tok = modeling.load(tiny_model_dir)
    ex = demo[1][0]  # a grounded example: context + instruction
    ids, labels = chat.encode_sft(tok, ex, ex.response, max_length=1024)
    assert len(ids) == len(labels)
    n_prompt = sum(1 for y in labels if y == -100)
    prompt = chat.prompt_text(tok, ex)
    assert tok.decode(ids[:n_prompt]) == prompt
    completion = tok.decode(ids[n_prompt:])
    assert completion.startswith(ex.response)
    assert completion.rstrip().endswith("<|im_end|>")
    assert labels[n_prompt:] == ids[n_prompt:]
    # The context is delimited data placed before the instruction.
    assert prompt.index(ex.context.strip()[:30]) < prompt.index(ex.instruction.strip()[:30])


def test_sft_truncation_keeps_instruction_and_response(tiny_model_dir, demo):
    _, tok = modeling.load(tiny_model_dir)
    ex = demo[1][0]
    ids, labels = chat.encode_sft(tok, ex, ex.response, max_length=64)
    assert len(ids) == 64
    kept = tok.decode(ids)
    assert kept.endswith(tok.decode(tok(ex.response, add_special_tokens=False)["input_ids"][-5:]) + "<|im_end|>")
    assert "assistant" in kept  # the generation prompt survives a cut from the left
    assert any(y != -100 for y in labels)


def _train_cfg(**kw) -> TrainConfig:
    base = dict(max_steps=30, batch_size=4, learning_rate=1e-2, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                warmup_ratio=0.0, log_every=10, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    examples = demo[0][:4] + demo[1][:4]
    metrics = finetune(tiny_model_dir, examples, out, _train_cfg(), ModelConfig(max_length=192),
                       provenance={"stage": "test"}, log=lambda _: None)
    return out, metrics, examples


def test_finetune_learns_and_saves_an_adapter_with_provenance(trained, tiny_model_dir):
    out, metrics, examples = trained
    assert metrics["steps"] == 30 and metrics["examples"] == len(examples)
    # Overfitting 8 examples for 30 steps must cut the response loss substantially.
    assert metrics["final_loss"] < 0.6 * metrics["first_loss"]
    # The output is the adapter and a reference to its base, not a merged model.
    assert (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()
    prov = json.loads((out / modeling.PROVENANCE_FILE).read_text())
    assert prov["stage"] == "test" and prov["train"]["max_steps"] == 30 and prov["train"]["lora_r"] == 8
    assert prov["base_model"] == str(tiny_model_dir.resolve())
    assert modeling.checkpoint_parts(out) == (tiny_model_dir.resolve(), out)
    assert not (out / "checkpoints").exists()  # removed once the step ends


def test_merged_weights_equal_base_plus_adapter(trained, tiny_model_dir):
    from peft import PeftModel

    out, _, _ = trained
    merged, tok = modeling.load(out)  # base + adapter, merged in memory
    base, _ = modeling.load(tiny_model_dir)
    ids = tok("Describe the benefits of cycling.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        c = base(ids).logits  # the base alone, before peft wraps (and changes) it in place
        with_adapter = PeftModel.from_pretrained(base, str(out))
        a = merged(ids).logits
        b = with_adapter(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a, c)  # the adapter did change the model


def test_finetune_is_deterministic_for_a_seed(tiny_model_dir, demo, tmp_path):
    examples = demo[0][:3]
    cfg = _train_cfg(max_steps=3)
    m1 = finetune(tiny_model_dir, examples, tmp_path / "a", cfg, ModelConfig(max_length=128), log=lambda _: None)
    m2 = finetune(tiny_model_dir, examples, tmp_path / "b", cfg, ModelConfig(max_length=128), log=lambda _: None)
    assert m1["loss_history"] == m2["loss_history"]


def test_lora_layers_adapts_only_the_top_layers(tiny_model_dir, demo, tmp_path):
    out = tmp_path / "m"
    finetune(tiny_model_dir, demo[0][:2], out, _train_cfg(max_steps=1, lora_layers=1), ModelConfig(max_length=128),
             log=lambda _: None)
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        layers = {k.split("layers.")[1].split(".")[0] for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert layers == {"1"}  # 2-layer model: only the top one


def test_unknown_target_modules_fail_clearly(tiny_model_dir, demo, tmp_path):
    with pytest.raises(ValueError, match="target_modules"):
        finetune(tiny_model_dir, demo[0][:2], tmp_path / "m", _train_cfg(max_steps=1, target_modules=["nope"]),
                 ModelConfig(), log=lambda _: None)


def test_generate_covers_the_grid_with_recorded_settings(tiny_model_dir, demo):
    examples = demo[0][:3] + demo[1][:2]
    cfg = GenerateConfig(
        grid=[DecodingSetting(temperature=0.0, top_p=1.0), DecodingSetting(temperature=0.8, top_p=0.9)],
        samples_per_setting=2,
        max_new_tokens=6,
        batch_size=4,
        seed=3,
    )
    cands = generate(tiny_model_dir, examples, cfg, ModelConfig(), model_name="tiny", log=lambda _: None)
    assert len(cands) == len(examples) * (1 + 2)
    assert len({c.id for c in cands}) == len(cands)
    per_ex = {e.id: [c for c in cands if c.example_id == e.id] for e in examples}
    for group in per_ex.values():
        strategies = sorted(c.decoding["strategy"] for c in group)
        assert strategies == ["greedy", "sample", "sample"]
        for c in group:
            assert c.model == "tiny" and isinstance(c.decoding["seed"], int)
            assert c.decoding["temperature"] in (0.0, 0.8)
    # Same seed, same candidates; another seed changes the samples but not greedy.
    again = generate(tiny_model_dir, examples, cfg, ModelConfig(), log=lambda _: None)
    assert [c.text for c in again] == [c.text for c in cands]
    cfg.seed = 4
    other = generate(tiny_model_dir, examples, cfg, ModelConfig(), log=lambda _: None)
    greedy = [(a.text, b.text) for a, b in zip(cands, other, strict=True) if a.decoding["strategy"] == "greedy"]
    sampled = [(a.text, b.text) for a, b in zip(cands, other, strict=True) if a.decoding["strategy"] == "sample"]
    assert all(x == y for x, y in greedy)
    assert any(x != y for x, y in sampled)


def test_greedy_generation_does_not_depend_on_batching(tiny_model_dir, demo):
    examples = demo[1][:4]
    cfg = GenerateConfig(grid=[DecodingSetting(temperature=0.0, top_p=1.0)], max_new_tokens=8, batch_size=4)
    batched = generate(tiny_model_dir, examples, cfg, ModelConfig(), log=lambda _: None)
    cfg.batch_size = 1
    single = generate(tiny_model_dir, examples, cfg, ModelConfig(), log=lambda _: None)
    assert [c.text for c in batched] == [c.text for c in single]
