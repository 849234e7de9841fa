"""The LLM judge: any OpenAI-compatible endpoint scores instruction following and faithfulness.

prompts (rubrics, data framing), parsing (the reply's score), cache (SQLite), ledger (tokens, cost,
budget) and client (LLMJudge: concurrency, retries, the circuit breaker). Its settings are
reset.config.LLMJudgeConfig.
"""

from reset.config import LLMJudgeConfig
from reset.judging.llm.cache import JudgeCache, cache_key
from reset.judging.llm.client import (
    BudgetExceeded,
    LLMAxisScore,
    LLMJudge,
    LLMJudgeError,
    build_judge,
    llm_judges,
)
from reset.judging.llm.ledger import Ledger
from reset.judging.llm.parsing import ParseError, parse_judgment, to_unit
from reset.judging.llm.prompts import (
    JSON_SCHEMA,
    RATIONALE_MAX_CHARS,
    RUBRICS,
    Rubric,
    build_prompt,
    strip_data_tags,
)

__all__ = [
    "JSON_SCHEMA", "RATIONALE_MAX_CHARS", "RUBRICS", "BudgetExceeded", "JudgeCache", "LLMAxisScore", "LLMJudge",
    "LLMJudgeConfig", "LLMJudgeError", "Ledger", "ParseError", "Rubric", "build_judge", "build_prompt", "cache_key",
    "llm_judges", "parse_judgment", "strip_data_tags", "to_unit",
]
