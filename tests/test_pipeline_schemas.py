"""Every pipeline we compile (the ReSet pipeline for tiny, demo and paper-7b, the experiment and the
promotion pipeline), with its cluster settings, read strictly against KFP's own protobuf schemas
(tests/kfp_schemas.py): the pipeline spec as kfp's `PipelineSpec`, every Kubernetes executor config
as kfp-kubernetes' `KubernetesExecutorConfig`, unknown fields refused. The checker itself is shown to
refuse one wrong field in each place (a misspelt PVC key first)."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipelines import definitions
from reset.config import load_config

from .conftest import REPO
from .kfp_schemas import problems

PIPELINES = {
    "tiny": ("tiny.yaml", definitions.TRAINING),
    "demo": ("demo.yaml", definitions.TRAINING),
    "paper-7b": ("paper-7b.yaml", definitions.TRAINING),
    "experiment": ("experiment.yaml", definitions.EXPERIMENT),
    "promotion": ("paper-7b.yaml", definitions.PROMOTION),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, list[dict]]:
    out = {}
    root = tmp_path_factory.mktemp("schemas")
    for name, (config, which) in PIPELINES.items():
        path = root / f"{name}.yaml"
        definitions.compile_to(load_config(REPO / "configs" / config), which, str(path))
        out[name] = list(yaml.safe_load_all(path.read_text()))
    return out


def _executors(docs: list[dict]) -> dict[str, dict]:
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("name", list(PIPELINES))
def test_the_compiled_pipeline_is_what_kfps_schemas_accept(compiled, name):
    docs = compiled[name]
    assert problems(docs) == []
    # what was checked: a spec and a platform document with Kubernetes settings for executors
    assert len(docs) == 2 and _executors(docs)


def test_the_cluster_settings_checked_include_volumes_secrets_selectors_and_deadlines(compiled):
    """paper-7b carries every kind of setting pipelines/cluster.py writes, so all of them were parsed."""
    kinds = {key for cfg in _executors(compiled["paper-7b"]).values() for key in cfg}
    assert {"pvcMount", "secretAsEnv", "nodeSelector", "tolerations", "activeDeadlineSeconds",
            "emptyDirMounts", "fieldPathAsEnv"} <= kinds


def _with(docs: list[dict], change) -> list[dict]:
    docs = copy.deepcopy(docs)
    change(docs)
    return docs


def _first_executor_with(docs: list[dict], key: str) -> dict:
    return next(cfg for cfg in _executors(docs).values() if key in cfg)


def test_a_misspelt_pvc_key_is_refused(compiled):
    def misspell(docs):
        mount = _first_executor_with(docs, "pvcMount")["pvcMount"][0]
        mount["mountpath"] = mount.pop("mountPath")

    found = problems(_with(compiled["paper-7b"], misspell))
    assert len(found) == 1 and 'has no field named "mountpath"' in found[0], found
    assert found[0].startswith("kubernetes executor exec-")


@pytest.mark.parametrize(
    ("what", "change", "says"),
    [
        ("a deadline that is not a number",
         lambda docs: _first_executor_with(docs, "activeDeadlineSeconds").update(activeDeadlineSeconds="a day"),
         "activeDeadlineSeconds"),
        ("a Secret env var without its key",
         lambda docs: _first_executor_with(docs, "secretAsEnv")["secretAsEnv"][0]["keyToEnv"][0].pop("secretKey"),
         "a Secret env var without its key"),
        ("a node selector under an unknown name",
         lambda docs: _first_executor_with(docs, "nodeSelector").update(nodeSelectors={"labels": {"a": "b"}}),
         'has no field named "nodeSelectors"'),
        ("settings for an executor the spec does not have",
         lambda docs: _executors(docs).update({"exec-no-such-step": {"nodeSelector": {"labels": {"a": "b"}}}}),
         "exec-no-such-step: no such executor"),
        ("an unknown field in the pipeline spec",
         lambda docs: next(iter(docs[0]["root"]["dag"]["tasks"].values())).update(dependentTask=["mix"]),
         'has no field named "dependentTask"'),
        ("a third document", lambda docs: docs.append({}), "3 YAML documents"),
    ],
)
def test_a_wrong_field_anywhere_is_refused(compiled, what, change, says):
    found = problems(_with(compiled["paper-7b"], change))
    assert found and says in found[0], (what, found)
