"""bench/profile_run.py --seeds: an experiment run of one seed, extended to N seeds from its own
measured tasks (the figure docs/bench.md gives for `make experiment`'s five seeds)."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("profile_run", REPO / "bench" / "profile_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _steps(*tasks):
    out, t = [], 100.0
    for name, seconds, metrics in tasks:
        t += 2.0  # 2 s between tasks
        out.append({"step": name, "start": t, "end": t + seconds, "metrics": metrics})
        t += seconds
    return out


def test_the_projection_repeats_the_seeds_loop_and_the_trade_off_loop_as_configured():
    pr = _module()
    steps = _steps(("mix", 5, {}), ("answer", 100, {}),
                   ("finetune-mtl", 120, {}), ("generate", 300, {}), ("evaluate", 200, {"mtl.if_prompt_acc": 0.5}),
                   ("finetune-if-only", 60, {}), ("finetune-cd-if", 60, {}), ("evaluate", 80, {"if-only.x": 1}))
    assert [pr.loop_of(s) for s in steps] == ["once"] * 2 + ["seeds"] * 3 + ["tradeoff"] * 3
    parent = {"start": 100.0, "config": {"experiment": {"seeds": [0], "tradeoff_seed_count": 1}}}
    span = steps[-1]["end"] - 100.0  # 925 s of tasks, 16 s between them
    text = pr.projection(steps, parent, 5, baseline=span / 2)
    # the seeds' loop: 620 s of tasks + 3 x 2 s between them, four more times; the trade-off loop once
    once_more = 620 + 6
    assert f"{span + 4 * once_more:.1f} s" in text
    assert f"{(span + 4 * once_more) / (span / 2):.2f}x the baseline" in text
    # every arm on every seed: the trade-off loop (200 s + 3 x 2 s) four more times too
    assert f"{span + 4 * once_more + 4 * 206:.1f} s" in text
    parent["config"]["experiment"]["seeds"] = [0, 1]
    with pytest.raises(SystemExit, match="one-seed run"):
        pr.projection(steps, parent, 5)
