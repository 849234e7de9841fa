"""The preflight that knows the model and the work (reset/preflight.py): token budgets against the
model's context window (its config.json), the run's work estimated in one line and held against
a ceiling (model.max_run_sequences), and devices or FIFOs given as data refused for what they are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipelines.cli import main
from reset import preflight
from reset.config import load_config

from .conftest import REPO

TINY = REPO / "configs" / "tiny.yaml"
HANG_GUARD_S = 300


def test_a_budget_beyond_the_context_window_exits_2_at_preflight_naming_the_key_and_both_figures(tmp_path):
    """The issue's case: the run went through mix and fine-tuning and sat in generate until stopped.
    Run as a process of its own, so that a run that does start is ended by the hang guard."""
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "run", "--config", str(TINY), "--output-dir", str(out),
                             "--set", "generate.max_new_tokens=100000000"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the run started: preflight let it through")
    assert proc.returncode == 2 and not out.exists()  # nothing started
    assert err.splitlines() == [
        "preflight: generate.max_new_tokens: 100,000,000: model.max_prompt_length 160 + generate.max_new_tokens "
        "100,000,000 = 100,000,160 tokens, more than the context window of builtin:tiny-llama "
        "(max_position_embeddings 1,024)"]


def test_every_budget_is_held_against_the_models_own_config(tiny_model_dir):
    def problems(*sets):
        cfg = load_config(TINY, [f"model.base={tiny_model_dir}", *sets])
        model = preflight._Model()
        assert preflight.check_model(cfg.model.base, "model.base", "local", "", model) == []
        return [str(p) for p in preflight.check_context(cfg, model)]

    assert problems() == []
    assert problems("evaluate.max_new_tokens=900", "model.max_length=2000") == [
        f"evaluate.max_new_tokens: 900: model.max_prompt_length 160 + evaluate.max_new_tokens 900 = 1,060 tokens, "
        f"more than the context window of {tiny_model_dir} (max_position_embeddings 1,024)",
        f"model.max_length: 2,000 training tokens per sequence, more than the context window of {tiny_model_dir} "
        "(max_position_embeddings 1,024)",
    ]
    assert problems("model.max_prompt_length=1024") == [
        f"model.max_prompt_length: 1,024 tokens leave no room for an answer in the context window of "
        f"{tiny_model_dir} (max_position_embeddings 1,024)"]
    assert preflight.context_window({"text_config": {"max_position_embeddings": 4096}}) == 4096
    assert preflight.context_window({}) == 0  # a config that does not say: nothing checked


def test_the_work_estimate_in_one_line_and_the_ceiling(capsys, tmp_path):
    lines = {name: preflight.work(load_config(REPO / "configs" / f"{name}.yaml")) for name in
             ("tiny", "demo", "paper-7b")}
    paper = lines["paper-7b"]
    # 2 x 4,000 seen prompts x (greedy + 3 settings x 2 samples); 1,000 test prompts x (base, MTL, ReSet, champion)
    assert (paper.samples, paper.answers, paper.judgments) == (56_000, 4_000, 56_000)
    assert paper.generated_tokens == 56_000 * 512 + 4_000 * 512 and paper.training_tokens is None
    assert paper.line() == ("work: <= 30.7M tokens to generate (56k samples for 8,000 seen prompts, 4,000 evaluation "
                            "answers), training tokens unknown before the mix (data.train_size 0), 56k candidates to "
                            "judge; 116k sequences")
    tiny = lines["tiny"]
    assert tiny.train_examples == 24 * 1 + 24 * 1 and tiny.training_tokens == 48 * 192
    ceiling = load_config(TINY).model.max_run_sequences
    assert paper.sequences * 5 < ceiling  # generous for the paper's scale
    two = preflight.work(load_config(REPO / "configs" / "paper-7b.yaml", ["select.rounds=2"]))
    assert two.samples == 2 * paper.samples and two.answers == paper.answers + 2 * 1_000  # each round on dev
    cfg = load_config(TINY, ["generate.samples_per_setting=1000000"])
    assert preflight.work(cfg).sequences > 10 * ceiling  # the slip of the issue: far above
    (p,) = preflight.check_work(cfg, preflight.work(cfg))
    assert p.key == "model.max_run_sequences" and "16,000,104 sequences (8,000,008 samples" in p.cause
    assert "more than the ceiling 1,000,000" in p.cause
    # an LLM judge: its requests and their cost at its prices
    llm = preflight.work(load_config(TINY, ["judge.judges=[llm-instruction, reference]",
                                            "judge.llm.base_url=http://127.0.0.1:9/v1", "judge.llm.model=j",
                                            "judge.llm.price_per_1k_prompt_tokens=0.001"]))
    assert llm.llm_requests == tiny.judgments + tiny.answers and llm.llm_usd > 0
    assert "LLM judge requests (<= $" in llm.line()
    rc = main(["run", "--config", str(TINY), "--output-dir", str(tmp_path), "--set", "model.max_run_sequences=100"])
    assert rc == 2 and "preflight: model.max_run_sequences: the run would process about 136 sequences" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_a_fifo_as_data_is_refused_for_what_it_is(kind, tmp_path, capsys):
    path = "/dev/zero"
    if kind == "fifo":
        path = str(tmp_path / "rows.jsonl")
        os.mkfifo(path)
    what = "a character device" if kind == "device" else "a FIFO (named pipe)"
    assert main(["data", "check", path]) == 1
    got = capsys.readouterr()
    out = got.out + got.err
    assert f"  {path}: is {what}, not a data file or a directory of them" in out.splitlines()
    assert "directory with no data files" not in out
    cfg = load_config(TINY, [f"data.instruction=[{path}]"])
    assert [str(p) for p in preflight.check_data(cfg, "local")] == [
        f"data.instruction[0]: {path}: is {what}, not a data file or a directory of them"]
