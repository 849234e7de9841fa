"""Typed configuration (pydantic v2): the sections (sections.py), the cluster settings (cluster.py),
the step table (steps.py), loading with overrides (loading.py), the run form (run_parameters.py)."""

from reset.config.cluster import ClusterConfig
from reset.config.loading import (
    ConfigError,
    apply_override,
    json_schema,
    load_config,
    section,
    to_dict,
    validate,
    write_schema,
)
from reset.config.secrets import has_credentials, url_secret
from reset.config.sections import (
    AXES,
    JUDGE_AXES,
    LLM_AXES,
    SECTIONS,
    DataConfig,
    DataSource,
    DecodingSetting,
    EvaluateConfig,
    ExperimentConfig,
    GenerateConfig,
    JudgeConfig,
    LLMJudgeConfig,
    ModelConfig,
    PipelineConfig,
    RegisterConfig,
    SelectConfig,
    TrackingConfig,
    TrainConfig,
)
from reset.config.steps import STEP_NAMES, STEPS, Step

__all__ = [
    "AXES", "JUDGE_AXES", "LLM_AXES", "SECTIONS", "STEPS", "STEP_NAMES", "Step", "ClusterConfig", "ConfigError", "DataConfig",
    "DataSource", "DecodingSetting", "EvaluateConfig", "ExperimentConfig", "GenerateConfig", "JudgeConfig", "LLMJudgeConfig",
    "ModelConfig", "PipelineConfig", "RegisterConfig", "SelectConfig", "TrackingConfig", "TrainConfig",
    "apply_override", "has_credentials", "json_schema", "load_config", "section", "to_dict", "url_secret",
    "validate", "write_schema",
]
