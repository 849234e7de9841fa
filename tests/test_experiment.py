"""The paper's experiment: every arm and the control in the right dependency order in the compiled
DAG, arms as validated overlays, the control's data, and the report across seeds."""

from __future__ import annotations

import pytest
import yaml

from reset.config import ConfigError, load_config
from reset.data.demo import build_demo
from reset.experiments.arms import ARMS, TRADEOFF_ARMS, arm_config, control_examples, needed
from reset.experiments.report import by_seed, seed_report

from .conftest import REPO


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from kfp import compiler

    from pipelines.experiment_pipeline import build_experiment

    cfg = load_config(REPO / "configs" / "experiment.yaml", ["experiment.seeds=[0, 1]"])
    out = tmp_path_factory.mktemp("exp") / "experiment.yaml"
    compiler.Compiler().compile(build_experiment(cfg), str(out), pipeline_parameters={"tracking": {}})
    return yaml.safe_load(out.read_text())


def _loops(doc) -> list[dict]:
    comps = doc["components"]
    return [c["dag"]["tasks"] for name, c in comps.items() if name.startswith("comp-for-loop") and "dag" in c]


def _loop(doc):
    """Both loops' tasks (the seeds' and the trade-off arms'; task keys are unique in a pipeline)."""
    loops = _loops(doc)
    assert len(loops) == 2
    return {k: v for tasks in loops for k, v in tasks.items()}


def _by_display(tasks):
    return {spec["taskInfo"]["name"]: (key, spec) for key, spec in tasks.items()}


def _upstream(tasks, display: str) -> set[str]:
    """Every task `display` depends on, transitively, by display name."""
    by_key = {key: spec["taskInfo"]["name"] for key, spec in tasks.items()}
    key = _by_display(tasks)[display][0]
    seen, todo = set(), [key]
    while todo:
        for dep in tasks[todo.pop()].get("dependentTasks", []):
            if dep in by_key and by_key[dep] not in seen:
                seen.add(by_key[dep])
                todo.append(dep)
    return seen


def test_every_arm_and_the_control_in_dependency_order(compiled):
    tasks = _loop(compiled)
    names = set(_by_display(tasks))
    assert {f"finetune-{a}" for a in ARMS} <= names
    # ReSet and ReSet-S share one generation and one judging per seed (ReSet's plan is a subset)
    assert {"generate-reset+reset-s", "judge-reset+reset-s", "select-reset", "select-reset-s",
            "control-data", "evaluate"} <= names
    assert not {"generate-reset", "generate-reset-s"} & names
    up = {n: _upstream(tasks, n) for n in names}
    assert up["finetune-cd-if"] == {"finetune-cd-only"} and up["finetune-if-cd"] == {"finetune-if-only"}
    assert up["finetune-mtl"] == set() and up["finetune-if-only"] == set()
    assert {"finetune-mtl", "generate-reset+reset-s", "judge-reset+reset-s", "select-reset"} <= up["finetune-reset"]
    assert {"finetune-mtl", "select-reset-s"} <= up["finetune-reset-s"] and "select-reset" not in up["finetune-reset-s"]
    # the control: MTL plus the references of the prompts ReSet kept
    assert {"finetune-mtl", "control-data", "select-reset"} <= up["finetune-control"]
    assert {f"finetune-{a}" for a in ARMS if a not in TRADEOFF_ARMS} <= up["evaluate"]
    assert {f"finetune-{a}" for a in TRADEOFF_ARMS} == up["evaluate-tradeoff"]
    # the MTL checkpoint is trained once per seed and feeds reset, reset-s and control
    assert sum(1 for n in names if n == "finetune-mtl") == 1
    # seeds run as a ParallelFor and the report collects every seed's scores: MTL and what continues it
    # over the run form's `seeds`, the trade-off arms in a loop of their own over `tradeoff_seeds`
    root = compiled["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loops = {spec["parameterIterator"]["items"]["inputParameter"].split("-")[-1]:
             compiled["components"][spec["componentRef"]["name"]]["dag"]["tasks"]
             for spec in root.values() if "parameterIterator" in spec}
    assert set(loops) == {"seeds", "tradeoff_seeds"}
    params = compiled["root"]["inputDefinitions"]["parameters"]
    assert params["seeds"]["defaultValue"] == [0, 1] and params["tradeoff_seeds"]["defaultValue"] == [0]
    main, side = _by_display(loops["seeds"]), _by_display(loops["tradeoff_seeds"])
    assert set(side) == {f"finetune-{a}" for a in TRADEOFF_ARMS} | {"evaluate-tradeoff"}
    assert not {f"finetune-{a}" for a in TRADEOFF_ARMS} & set(main)
    # the report collects both loops' evaluations
    report = root["experiment-report"]["inputs"]["artifacts"]
    assert {report[k]["taskOutputArtifact"]["outputArtifactKey"] for k in ("scores", "tradeoff_scores")} == {
        f"pipelinechannel--{main['evaluate'][0]}-scores", f"pipelinechannel--{side['evaluate-tradeoff'][0]}-scores"}
    # the base model has no seed: its answers are scored once, outside the loop, for every seed's evaluation
    assert "answer-base" in {spec["taskInfo"]["name"] for spec in root.values()}
    ev = _by_display(tasks)["evaluate"][1]
    assert ev["inputs"]["artifacts"]["base_answers"]["componentInputArtifact"]
    assert {"reset_selection", "reset_s_selection"} <= set(ev["inputs"]["artifacts"])


def test_reset_s_is_sampled_harder_and_filtered_stricter(compiled):
    tasks = _loop(compiled)

    def param(task, name):
        return _by_display(tasks)[task][1]["inputs"]["parameters"][name]["runtimeValue"]["constant"]

    shared = param("generate-reset+reset-s", "generate")
    gen, base = param("select-reset-s", "generate"), param("select-reset", "generate")
    sel, plain = param("select-reset-s", "select"), param("select-reset", "select")

    def per_prompt(g):
        return sum(1 if s["temperature"] == 0 else g["samples_per_setting"] for s in g["grid"])

    assert per_prompt(gen) > per_prompt(base) and max(g["temperature"] for g in gen["grid"]) > 1.0
    assert sel["mode"] == "reset-s" and plain["mode"] == "reset" and sel["top_fraction"] < 1
    # the shared generation draws everything both plans draw, and no more
    assert per_prompt(shared) == per_prompt(gen) and all(s in shared["grid"] for s in base["grid"] + gen["grid"])


def test_an_arm_selects_only_among_the_candidates_its_own_plan_draws():
    from reset.config import GenerateConfig
    from reset.data.records import Example
    from reset.models.generation.common import candidates, plan
    from reset.selection import sampled_by

    exs = [Example(id=f"e{i}", source="s", kind="instruction", instruction=f"Say {i}.", response="x") for i in range(3)]
    big = GenerateConfig(grid=[{"temperature": 0.7, "top_p": 0.95}, {"temperature": 1.0, "top_p": 0.95},
                               {"temperature": 0.0}, {"temperature": 1.2, "top_p": 0.95}], samples_per_setting=4)
    small = GenerateConfig(grid=[{"temperature": 0.7, "top_p": 0.95}, {"temperature": 1.0, "top_p": 0.95}],
                           samples_per_setting=2)
    reqs = plan(exs, big)
    cands = candidates(reqs, [[f"{r.example.id}-{r.setting_index}-{k}" for k in range(r.n)] for r in reqs], big,
                       backend="hf", model_name="m", order=exs)
    mine = sampled_by(cands, small)
    assert len(cands) == 3 * 13 and len(mine) == 3 * 4
    assert {c.id.split("/")[1] for c in mine} == {"g0s0", "g0s1", "g1s0", "g1s1"}
    # the same requests (setting index and seed) a generation with the small plan makes itself
    own = {(r.example.id, r.setting_index, r.seed) for r in plan(exs, small)}
    assert {(c.example_id, int(c.id.split("/g")[1][0]), c.decoding["seed"]) for c in mine} == own
    assert sampled_by(cands, big) == cands


def test_needed_arms_bring_their_prerequisites():
    assert needed(["cd-if"]) == ["cd-only", "cd-if"]
    assert needed(["control"]) == ["mtl", "reset", "control"]
    assert needed(["reset-s", "if-only"]) == ["mtl", "reset-s", "if-only"]


def test_overlays_are_validated_and_seeds_applied():
    cfg = load_config(REPO / "configs" / "experiment.yaml")
    a = arm_config(cfg, "reset-s", cfg.experiment.overlays, seed=7)
    assert a.select.mode == "reset-s" and a.train.seed == 7 and a.generate.seed == 7
    assert arm_config(cfg, "mtl", cfg.experiment.overlays).select.mode == "reset"
    with pytest.raises(ConfigError, match=r"experiment.overlays.reset.select.threshold"):
        arm_config(cfg, "reset", {"reset": {"select": {"threshold": 2}}})


def test_control_gets_the_references_of_the_prompts_reset_kept():
    ifs, cds = build_demo(seed=0, n_instruction=6, n_grounded=6)
    seen = ifs + cds
    selected = [s.__class__(**{**s.__dict__, "id": f"{s.id}@reset", "response": "model's own answer"})
                for s in seen[::2]]
    ctl = control_examples(selected, seen)
    assert len(ctl) == len(selected)
    assert [c.response for c in ctl] == [s.response for s in seen[::2]]
    assert all(c.id.endswith("@control") for c in ctl)


def test_the_report_shows_per_seed_spread():
    def payload(seed, reset_if):
        est = {"if_prompt_acc": {"value": reset_if, "low": reset_if - 0.1, "high": reset_if + 0.1, "n": 100},
               "faithfulness": {"value": 0.6, "low": 0.5, "high": 0.7, "n": 50}}
        mtl = {"if_prompt_acc": {"value": 0.4, "low": 0.3, "high": 0.5, "n": 100},
               "faithfulness": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 50}}
        n_up = round((reset_if - 0.4) * 100)
        units = {"mtl": {"if_prompt_acc": {f"i{u}": u < 40 for u in range(100)},
                         "faithfulness": {f"f{u}": 0.5 + 0.01 * (u % 3) for u in range(50)}},
                 "reset": {"if_prompt_acc": {f"i{u}": u < 40 + n_up for u in range(100)},
                           "faithfulness": {f"f{u}": 0.6 + 0.01 * (u % 3) for u in range(50)}}}
        return {"seed": seed, "verdicts": [f"ReSet vs MTL (seed {seed})"], "units": units,
                "summary": {"arms": ["mtl", "reset"], "reference": "mtl", "estimates": {"mtl": mtl, "reset": est},
                            "metrics": [{"key": "if_prompt_acc", "kind": "rate"},
                                        {"key": "faithfulness", "kind": "mean"}]}}

    text, data = seed_report({0: payload(0, 0.5), 1: payload(1, 0.44)})
    assert data["arms"]["reset"]["if_prompt_acc"]["per_seed"] == [0.5, 0.44]
    assert "seeds 0.44-0.50" in text and "sd 0.04" in text
    # the per-seed paired differences and their spread, pooled
    pooled = data["pooled"]["reset"]["if_prompt_acc"]
    assert pooled["per_seed"] == pytest.approx([0.10, 0.04]) and pooled["seed_sd"] == pytest.approx(0.0424, abs=1e-3)
    assert "+0.100, +0.040" in text
    one, _ = seed_report({0: payload(0, 0.5)})
    assert "0.50 [0.40, 0.60]" in one  # one seed: the interval
    assert "one seed: one trained model" in one


def test_seeds_run_one_after_the_other_locally_and_as_configured_on_a_cluster(tmp_path):
    from kfp import compiler

    from pipelines import definitions
    from pipelines.experiment_pipeline import build_experiment

    cfg = load_config(REPO / "configs" / "experiment.yaml", ["experiment.parallelism=3"])

    def loop_policy(path) -> dict:
        doc = yaml.safe_load(path.read_text().split("\n---\n")[0])
        root = doc["components"]["comp-exit-handler-1"]["dag"]["tasks"]
        return next(spec for spec in root.values() if "parameterIterator" in spec).get("iteratorPolicy", {})

    compiler.Compiler().compile(build_experiment(cfg), str(tmp_path / "local.yaml"))  # no cluster: a local run
    definitions.compile_to(cfg, definitions.EXPERIMENT, str(tmp_path / "cluster.yaml"))
    assert loop_policy(tmp_path / "local.yaml") == {"parallelismLimit": 1}
    assert loop_policy(tmp_path / "cluster.yaml") == {"parallelismLimit": 3}


def test_trade_off_arms_on_fewer_seeds_are_paired_with_mtl_of_their_own_seed():
    """experiment.tradeoff_seed_count: the trade-off arms' evaluation is a second payload of seed 0 (its
    own loop, no MTL in it); the report merges it with that seed's and pairs IF-only with MTL of
    seed 0 only, while ReSet vs MTL pools both seeds."""
    def est(v):
        return {"if_prompt_acc": {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 100},
                "faithfulness": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 50}}

    def units(up, faith):
        return {"if_prompt_acc": {f"i{u}": u < 40 + up for u in range(100)},
                "faithfulness": {f"f{u}": faith + 0.01 * (u % 3) for u in range(50)}}

    metrics = [{"key": "if_prompt_acc", "kind": "rate"}, {"key": "faithfulness", "kind": "mean"}]

    def seeds_loop(seed, reset_up):
        return {"seed": seed, "units": {"mtl": units(0, 0.5), "reset": units(reset_up, 0.55)},
                "summary": {"arms": ["mtl", "reset"], "reference": "mtl", "metrics": metrics,
                            "estimates": {"mtl": est(0.4), "reset": est(0.4 + reset_up / 100)}}}

    tradeoff = {"seed": 0, "units": {"if-only": units(12, 0.3)},  # reference "mtl" absent: no pairs in it
                "summary": {"arms": ["if-only"], "reference": None, "metrics": metrics,
                            "estimates": {"if-only": est(0.52)}}}
    payloads = by_seed([seeds_loop(0, 8), seeds_loop(1, 4), tradeoff])
    assert sorted(payloads) == [0, 1] and payloads[0]["summary"]["arms"] == ["mtl", "reset", "if-only"]
    assert payloads[0]["summary"]["reference"] == "mtl" and "if-only" not in payloads[1]["summary"]["arms"]
    text, data = seed_report(payloads)
    assert data["seeds_of"]["reset"] == [0, 1] and data["seeds_of"]["if-only"] == [0]
    assert data["pooled"]["if-only"]["if_prompt_acc"]["per_seed"] == pytest.approx([0.12])
    assert data["pooled"]["if-only"]["faithfulness"]["diff"] == pytest.approx(-0.2)
    assert data["pooled"]["reset"]["if_prompt_acc"]["per_seed"] == pytest.approx([0.08, 0.04])
    assert "+0.120 (seed 0 only)" in text and "0.52 [0.42, 0.62] (seed 0 only)" in text
    assert "describes that model, not the method" in text
    # the family counts it once per axis, beside ReSet vs MTL (the primary one, not in the family)
    assert {(f["comparison"], f["axis"]) for f in data["family"]} == {("if-only", "if_prompt_acc"),
                                                                       ("if-only", "faithfulness")}
    assert data["unpaired"] == [] and "is not compared" not in text
    # a run form whose tradeoff_seeds are no seed of MTL's: the arm is named as not compared, not dropped quietly
    text, data = seed_report(by_seed([seeds_loop(0, 8), {**tradeoff, "seed": 5}]))
    assert data["unpaired"] == ["if-only"] and "IF-only is not compared with MTL" in text


def test_the_trade_off_arms_run_on_the_first_seeds_and_the_reference_is_not_one_of_them():
    cfg = load_config(REPO / "configs" / "experiment.yaml", ["experiment.seeds=[7, 8, 9]"])
    assert cfg.experiment.tradeoff_seed_count == 1 and cfg.experiment.tradeoff_seeds() == [7]
    from pipelines.experiment_pipeline import build_experiment, experiment_arguments

    assert experiment_arguments(cfg)["tradeoff_seeds"] == [7]
    every = load_config(REPO / "configs" / "demo.yaml", ["experiment.seeds=[3, 4]"])
    assert every.experiment.tradeoff_seeds() == [3, 4]  # not set: every seed
    with pytest.raises(ConfigError, match=r"experiment.*tradeoff_seed_count: 3, but seeds has 2"):
        load_config(REPO / "configs" / "experiment.yaml", ["experiment.seeds=[0, 1]",
                                                           "experiment.tradeoff_seed_count=3"])
    cfg = load_config(REPO / "configs" / "experiment.yaml", ["experiment.reference=if-only"])
    with pytest.raises(ValueError, match="reference arm 'if-only' is itself a trade-off arm"):
        build_experiment(cfg)
