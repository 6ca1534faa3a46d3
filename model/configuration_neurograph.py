"""`NeuroGraphConfig`: the Hugging Face config of an exported NeuroGraph model. It carries the
run's `model` section verbatim (`model_section`); the family's own config class is built from it."""
from __future__ import annotations

from typing import Any, Optional

from transformers import PretrainedConfig


class NeuroGraphConfig(PretrainedConfig):
    model_type = "neurograph"

    def __init__(self, model_section: Optional[dict[str, Any]] = None, max_position_embeddings: Optional[int] = None,
                 use_cache: bool = True, trained_vocab_size: Optional[int] = None, **kwargs: Any):
        self.model_section = dict(model_section or {})
        # ids at or above it were appended by the export (an EOS or UNK the data lacked): never
        # trained, their embeddings are zero and their logits -inf. None: every id was trained.
        self.trained_vocab_size = trained_vocab_size
        self.arch = self.model_section.get("arch")
        self.vocab_size = self.model_section.get("vocab_size")
        # transformers' names for the sizes (its caches count layers with num_hidden_layers)
        self.num_hidden_layers = self.model_section.get("n_layer")
        self.hidden_size = self.model_section.get("d_model")
        self.num_attention_heads = self.model_section.get("n_head")
        self.max_position_embeddings = max_position_embeddings  # None: recurrent, no context limit
        self.use_cache = use_cache  # generate() decodes with the cache (KV or recurrent state)
        kwargs.setdefault("tie_word_embeddings", False)  # the families tie their heads themselves
        super().__init__(**kwargs)
