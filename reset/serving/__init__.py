"""The registered model as an MLflow pyfunc (model.py) and its models-from-code entry point."""

from reset.serving.model import ResetChatModel

__all__ = ["ResetChatModel"]
