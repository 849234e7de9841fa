"""Typed configuration (pydantic v2): the models, loading with overrides, the JSON Schema."""

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
from reset.config.sections import (
    AXES,
    JUDGE_AXES,
    LLM_AXES,
    SECTIONS,
    STEP_NAMES,
    ClusterConfig,
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
    has_credentials,
    url_secret,
)

__all__ = [
    "AXES", "JUDGE_AXES", "LLM_AXES", "SECTIONS", "STEP_NAMES", "ClusterConfig", "ConfigError", "DataConfig",
    "DataSource", "DecodingSetting", "EvaluateConfig", "ExperimentConfig", "GenerateConfig", "JudgeConfig", "LLMJudgeConfig",
    "ModelConfig", "PipelineConfig", "RegisterConfig", "SelectConfig", "TrackingConfig", "TrainConfig",
    "apply_override", "has_credentials", "json_schema", "load_config", "section", "to_dict", "url_secret",
    "validate", "write_schema",
]
