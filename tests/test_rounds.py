"""ReSet rounds (select.rounds): the DAG unrolls them when compiled (round k samples from round k-1's
model, selects at its threshold and continues its fine-tuning; every round's model is scored on
dev and the best is the ReSet model); the experiment's "ReSet, 2 rounds" arm. (The tiny pipeline
with two rounds run end to end under kfp.local: tests/test_shards.py.)"""

from __future__ import annotations

import pytest
import yaml

from reset.config import load_config
from reset.evaluation.rounds import best_round, rounds_table

from .conftest import REPO
from .test_task_graphs import task_graph


def _compiled(tmp_path, which: str, cfg_file: str, sets: list[str]) -> dict:
    from pipelines import definitions

    cfg = load_config(REPO / "configs" / cfg_file, sets)
    out = tmp_path / "p.yaml"
    definitions.compile_to(cfg, getattr(definitions, which), str(out))
    return yaml.safe_load(out.read_text().split("\n---\n")[0])


def _inputs(doc: dict, path: list[str]) -> dict:
    """The artifact inputs of the task at `path` (display names through the nested DAGs)."""
    dag = doc["root"]["dag"]
    for i, name in enumerate(path):
        (spec,) = [t for t in dag["tasks"].values() if t["taskInfo"]["name"] == name]
        if i < len(path) - 1:
            dag = doc["components"][spec["componentRef"]["name"]]["dag"]
    return spec["inputs"]


def test_two_rounds_unroll_into_the_dag(tmp_path):
    doc = _compiled(tmp_path, "TRAINING", "tiny.yaml", ["select.rounds=2"])
    g = {k.removeprefix("reset-steps/"): v for k, v in task_graph(doc).items()}
    strip = {k: {d.removeprefix("reset-steps/") for d in v} for k, v in g.items()}
    assert {"generate-r2", "judge-r2", "select-r2", "finetune-reset-r2", "pick-round"} <= set(g)
    assert "finetune-reset" in strip["generate-r2"]  # round 2 samples from round 1's model
    assert {"finetune-reset", "select-r2"} <= strip["finetune-reset-r2"]  # and continues its fine-tuning
    assert {"finetune-reset", "finetune-reset-r2"} <= strip["pick-round"]
    assert "pick-round" in strip["evaluate"] and "pick-round" in strip["register"]
    ft2 = _inputs(doc, ["reset-steps", "finetune-reset-r2"])
    assert ft2["artifacts"]["start_model"]["taskOutputArtifact"]["producerTask"] == "finetune-2"
    pick = _inputs(doc, ["reset-steps", "pick-round"])["artifacts"]
    assert set(pick) == {"dev_set", "round_1", "round_2"}
    assert pick["dev_set"]["taskOutputArtifact"]["outputArtifactKey"] == "dev_set"  # dev, never test
    for task in ("evaluate", "register"):
        arts = _inputs(doc, ["reset-steps", task])["artifacts"]
        model = arts["reset" if task == "evaluate" else "reset_model"]["taskOutputArtifact"]
        assert model == {"outputArtifactKey": "checkpoint", "producerTask": "pick-round"}
    sel2 = _inputs(doc, ["reset-steps", "select-r2"])["parameters"]
    assert sel2["round_number"]["runtimeValue"]["constant"] == 2  # its threshold: round_threshold(cfg, 2)
    # one round (the paper's) compiles to the graph tests/golden/task_graphs.json pins: no pick
    assert "pick-round" not in task_graph(_compiled(tmp_path, "TRAINING", "tiny.yaml", []))


def test_more_rounds_than_the_dag_unrolls_or_no_dev_split_are_refused():
    from reset.config import ConfigError

    with pytest.raises(ConfigError, match="select.rounds: Input should be less than or equal to 4"):
        load_config(REPO / "configs" / "tiny.yaml", ["select.rounds=5"])
    with pytest.raises(ConfigError, match="select.rounds: 2 rounds pick the best round on the dev split"):
        load_config(REPO / "configs" / "tiny.yaml", ["select.rounds=2", "data.dev_per_kind=0"])


def test_the_experiment_holds_the_two_round_arm(tmp_path):
    doc = _compiled(tmp_path, "EXPERIMENT", "experiment.yaml", ["experiment.seeds=[0, 1]"])
    g = task_graph(doc)
    loop = "experiment-steps/seeds/"
    up = {k.removeprefix(loop): {d.removeprefix(loop) for d in v} for k, v in g.items() if k.startswith(loop)}
    # ReSet, 2 rounds: a second round sampled from ReSet's model, then the better of the two on dev
    assert up["generate-reset-2r"] == {"finetune-reset"}
    assert up["select-reset-2r"] == {"generate-reset-2r", "judge-reset-2r"}
    assert up["finetune-reset-2r"] == {"finetune-reset", "select-reset-2r"}
    assert up["pick-round-reset-2r"] == {"finetune-reset", "finetune-reset-2r"}
    ev = _inputs(doc, ["experiment-steps", "seeds", "evaluate"])["artifacts"]
    assert ev["reset_2r"]["taskOutputArtifact"]["producerTask"] == "pick-round"
    sel = _inputs(doc, ["experiment-steps", "seeds", "select-reset-2r"])["parameters"]
    assert sel["round_number"]["runtimeValue"]["constant"] == 2


def test_the_best_round_by_dev_and_ties_to_the_earlier():
    r1 = {"if_prompt_acc": 0.5, "faithfulness": 0.6}
    r2 = {"if_prompt_acc": 0.6, "faithfulness": 0.6}
    assert best_round({1: r1, 2: r2}) == (2, {1: pytest.approx(0.55), 2: pytest.approx(0.6)})
    assert best_round({1: r2, 2: dict(r2), 3: r1})[0] == 1  # a tie: fewer rounds
    assert best_round({1: {"if_prompt_acc": 0.2}, 2: {"if_prompt_acc": 0.3}})[0] == 2  # dev without grounded items
    table = rounds_table({1: r1, 2: r2}, 2)
    assert "| 2 | 0.600 | 0.600 | 0.600 | the ReSet model |" in table
