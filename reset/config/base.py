"""What every config model shares: the base model (unknown keys, NaN and inf refused; field
docstrings as descriptions), the number types that refuse YAML's booleans, and FieldError, the
error a cross-field check raises naming its field."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _not_bool(value: Any) -> Any:
    """YAML's true/false are not numbers here (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


NoBool = BeforeValidator(_not_bool)
Int = Annotated[int, NoBool]
Float = Annotated[float, NoBool]
Fraction = Annotated[float, Field(ge=0.0, le=1.0), NoBool]
PositiveInt = Annotated[int, Field(gt=0), NoBool]
NonNegativeInt = Annotated[int, Field(ge=0), NoBool]
PositiveFloat = Annotated[float, Field(gt=0.0), NoBool]
NonNegativeFloat = Annotated[float, Field(ge=0.0), NoBool]

class FieldError(ValueError):
    """A cross-field check's failure, naming the field (relative to the model) it is about."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key

class Section(BaseModel):
    """Base of every config model: unknown keys, NaN and inf are errors; docstrings describe fields."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True,
                              validate_assignment=True, validate_default=True)
