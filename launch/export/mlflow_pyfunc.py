"""MLflow pyfunc model ("models from code") around an exported Hugging Face folder, logged by
`neurograph export hf --register NAME`: `mlflow.pyfunc.load_model(...).predict(["prompt", ...])`
returns the prompts' greedy continuations (params: max_new_tokens). Needs only torch and
transformers where it is loaded."""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class ExportedCausalLM(PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = context.artifacts["hf_model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        self.model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()

    def predict(self, context, model_input, params=None) -> list[str]:
        prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else list(model_input)
        max_new_tokens = int((params or {}).get("max_new_tokens", 64))
        texts = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, return_tensors="pt")
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            texts.append(self.tokenizer.decode(out[0]))
        return texts


mlflow.models.set_model(ExportedCausalLM())
