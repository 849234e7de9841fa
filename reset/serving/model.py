"""The registered model: an MLflow pyfunc that answers prompts with the fine-tuned LM.

`mlflow.pyfunc.load_model("models:/<name>@champion")` loads it offline from the registry's
artifacts (the safetensors model and tokenizer are logged with it; no hub access).
Input: a DataFrame (or list of dicts) with an `instruction` column and an optional `context`.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from reset.data.records import Example
from reset.models import chat, loading


class ResetChatModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        cfg = context.model_config or {}
        self.max_new_tokens = int(cfg.get("max_new_tokens", 64))
        self.system_prompt = str(cfg.get("system_prompt", ""))
        self.model, self.tokenizer = loading.load(context.artifacts["model_dir"])
        self.model.eval()
        self.tokenizer.padding_side = "left"

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        import torch


        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        params = params or {}
        max_new = int(params.get("max_new_tokens", self.max_new_tokens))
        out = []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                row = {"instruction": row}
            ctx = row.get("context")
            ctx = ctx if isinstance(ctx, str) and ctx.strip() else None  # pandas gives NaN for None
            ex = Example(id=str(i), source="serving", kind="grounded" if ctx else "instruction",
                         instruction=str(row["instruction"]), response="-", context=ctx)
            text = chat.prompt_text(self.tokenizer, ex, self.system_prompt)
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                          eos_token_id=chat.stop_token_ids(self.tokenizer),
                                          pad_token_id=self.tokenizer.pad_token_id)
            out.append(self.tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return out
