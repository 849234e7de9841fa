"""MLflow models-from-code entry point: the registered model's definition (no pickled object).

Logged by reset.register with `python_model=<this file>`; `model_config` carries
max_new_tokens and system_prompt.
"""

import mlflow.models

from reset.serving.model import ResetChatModel

mlflow.models.set_model(ResetChatModel())
