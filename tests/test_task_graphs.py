"""The compiled pipelines' task graphs, pinned: every task (by its path of display names through the
nested DAGs) and the tasks it depends on, for the demo, tiny, paper-7b (cluster settings), sharded,
experiment and promotion pipelines. A refactoring that changes what runs, or in which order, fails
here; a deliberate change regenerates the file:

    .venv/bin/python -m tests.test_task_graphs     (writes tests/golden/task_graphs.json)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

from .conftest import REPO

GOLDEN = Path(__file__).parent / "golden" / "task_graphs.json"


def task_graph(doc: dict) -> dict[str, list[str]]:
    """{"parent/child": [dependencies by name]} over the root DAG and every sub-DAG it reaches."""
    comps = doc.get("components", {})
    out: dict[str, list[str]] = {}

    def walk(dag: dict, prefix: str) -> None:
        tasks = dag.get("tasks", {})
        names = {key: spec["taskInfo"]["name"] for key, spec in tasks.items()}
        for key, spec in tasks.items():
            name = f"{prefix}{names[key]}"
            out[name] = sorted(f"{prefix}{names.get(d, d)}" for d in spec.get("dependentTasks", []))
            sub = comps.get(spec.get("componentRef", {}).get("name", ""), {})
            if "dag" in sub:
                walk(sub["dag"], f"{name}/")

    walk(doc["root"]["dag"], "")
    return dict(sorted(out.items()))


def compiled_graphs() -> dict[str, dict[str, list[str]]]:
    from pipelines import definitions
    from reset.config import load_config

    graphs = {}
    with tempfile.TemporaryDirectory() as tmp:
        def read(path: str) -> dict:
            return yaml.safe_load(Path(path).read_text().split("\n---\n")[0])

        for name, cfg_file, sets in (("demo", "demo.yaml", []), ("tiny", "tiny.yaml", []),
                                     ("paper-7b", "paper-7b.yaml", []),
                                     ("paper-7b-sharded", "paper-7b.yaml", ["cluster.shards=3"])):
            cfg = load_config(REPO / "configs" / cfg_file, sets)
            definitions.compile_to(cfg, definitions.TRAINING, f"{tmp}/{name}.yaml")
            graphs[name] = task_graph(read(f"{tmp}/{name}.yaml"))
        cfg = load_config(REPO / "configs" / "experiment.yaml", ["experiment.seeds=[0, 1]"])
        definitions.compile_to(cfg, definitions.EXPERIMENT, f"{tmp}/exp.yaml")
        graphs["experiment"] = task_graph(read(f"{tmp}/exp.yaml"))
        cfg = load_config(REPO / "configs" / "paper-7b.yaml")
        definitions.compile_to(cfg, definitions.PROMOTION, f"{tmp}/promo.yaml")
        graphs["promotion"] = task_graph(read(f"{tmp}/promo.yaml"))
    return graphs


def test_the_compiled_task_graphs_are_pinned():
    want = json.loads(GOLDEN.read_text())
    got = compiled_graphs()
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name


def test_a_changed_dependency_would_show():
    # the comparison sees a dependency that moves (a positive control for the pin above)
    doc = {"root": {"dag": {"tasks": {"a": {"taskInfo": {"name": "mix"}}, "b": {"taskInfo": {"name": "train"},
                                                                                "dependentTasks": ["a"]}}}}}
    assert task_graph(doc) == {"mix": [], "train": ["mix"]}
    doc["root"]["dag"]["tasks"]["b"]["dependentTasks"] = []
    assert task_graph(doc) == {"mix": [], "train": []}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    GOLDEN.write_text(json.dumps(compiled_graphs(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
