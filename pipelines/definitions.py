"""The three pipelines a config compiles to, by their KFP names, for every command that compiles,
uploads, submits, schedules or runs them:

    reset             the ReSet pipeline (pipelines/reset_pipeline.py)
    reset-experiment  the paper's arms and a control over seeds (pipelines/experiment_pipeline.py)
    reset-promotion   champion vs challenger on a frozen set (pipelines/promotion_pipeline.py)

Each comes with its parameters from a config (`arguments`); `compile_to` writes the YAML and reads
it back with KFP's own loader. Cluster settings are applied by the pipeline (pipelines/cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reset.config import PipelineConfig

TRAINING, EXPERIMENT, PROMOTION = "reset", "reset-experiment", "reset-promotion"


@dataclass(frozen=True)
class Definition:
    name: str
    build: Callable[..., Any]  # (config, local=False) -> its @dsl.pipeline (local: no cluster settings)
    arguments: Callable[..., dict[str, Any]]  # (config, **extra) -> its parameters


def _training() -> Definition:
    from pipelines.reset_pipeline import build_for, pipeline_arguments

    return Definition(TRAINING, build_for, lambda cfg, **_: pipeline_arguments(cfg))


def _experiment() -> Definition:
    from pipelines.experiment_pipeline import build_for, experiment_arguments

    return Definition(EXPERIMENT, build_for, lambda cfg, **_: experiment_arguments(cfg))


def _promotion() -> Definition:
    from pipelines.promotion_pipeline import build_for, promotion_arguments

    return Definition(PROMOTION, build_for, lambda cfg, challenger="", **_: promotion_arguments(cfg, challenger))


DEFINITIONS: dict[str, Callable[[], Definition]] = {TRAINING: _training, EXPERIMENT: _experiment, PROMOTION: _promotion}


def get(name: str) -> Definition:
    return DEFINITIONS[name]()


def for_config(cfg: PipelineConfig, which: str = "auto") -> str:
    """The pipeline a command means: `which`, or (auto) the experiment when the config sets an
    `experiment:` section (configs/experiment.yaml), else the ReSet pipeline."""
    if which != "auto":
        return which
    return EXPERIMENT if "experiment" in cfg.model_fields_set else TRAINING


def compile_to(cfg: PipelineConfig, name: str, output: str, **extra: Any) -> None:
    """Compile pipeline `name` for `cfg` to `output` (its parameters default to the config's)."""
    from kfp import compiler
    from kfp.components import load_component_from_file

    d = get(name)
    compiler.Compiler().compile(d.build(cfg), output, pipeline_parameters=d.arguments(cfg, **extra))
    load_component_from_file(output)  # kfp's own loader must read it back
