"""Hugging Face wrappers around the NeuroGraph model families (`PreTrainedModel` +
`GenerationMixin`). The model math is the family module itself, shipped beside this file; the
wrappers only adapt caches and outputs to transformers' API:

- `NeuroGraphForCausalLM` (Transformer, INL): the families' per-layer KV caches are views on one
  transformers `DynamicCache`, so `generate` feeds one new token per step and beam search
  reorders the cache with transformers' own code.
- `NeuroGraphRecurrentForCausalLM` (INN, Mamba stack, LSTM): the state returned by the family's
  `prefill` lives in a `RecurrentStateCache`; every new token costs one `decode_step`, O(1) in
  the context length, as in `neurograph generate`.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_neurograph import NeuroGraphConfig
from .inl import INLModel  # noqa: F401  (importing a family registers its architecture)
from .inn import INN  # noqa: F401
from .lstm import LSTMLanguageModel  # noqa: F401
from .mamba_stack import MambaStack  # noqa: F401
from .recurrent import RecurrentGeneration, map_state
from .registry import model_spec
from .transformer import Transformer  # noqa: F401

# The output field holding the cache: "cache" in transformers >= 5.x, "past_key_values" before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _persist_buffers(model: torch.nn.Module) -> None:
    """Computed tables (rotary, sinusoidal positions) become part of the weights: transformers builds
    the module on the meta device and restores only what the weight files hold. A buffer-only module
    shared by several parents (one rotary table for all layers) gets a copy per parent, since
    safetensors cannot hold one tensor under several names."""
    seen: set[int] = set()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if id(child) in seen and next(child.parameters(), None) is None:
                setattr(parent, name, copy.deepcopy(child))
            seen.add(id(child))
    for module in model.modules():
        module._non_persistent_buffers_set.clear()


class RecurrentStateCache(Cache):
    """The recurrent state of a family's decoding (whatever its `prefill` returns) and the number
    of tokens it has consumed. `batch_dim` is the batch axis of the state's tensors."""

    def __init__(self, batch_dim: int = 0):
        super().__init__(layers=[])
        self.state: Any = None
        self.seen_tokens = 0
        self.batch_dim = batch_dim

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep, for every row, the state of the beam it continues."""
        self.state = map_state(lambda t: t.index_select(self.batch_dim, beam_idx.to(t.device)), self.state)

    @property
    def is_compileable(self) -> bool:
        return False


class _KVCacheLayer:
    """model/layers.py's `KVCache` interface (`length`, `append`) over one layer of a transformers Cache."""

    def __init__(self, cache: Cache, layer: int):
        self.cache, self.layer = cache, layer

    @property
    def length(self) -> int:
        return self.cache.get_seq_length(self.layer)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(k, v, self.layer)


class _NeuroGraphPreTrainedModel(PreTrainedModel):
    config_class = NeuroGraphConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: NeuroGraphConfig):
        super().__init__(config)
        spec = model_spec(config.arch)
        self.model = spec.builder(spec.config_cls(**config.model_section))
        _persist_buffers(self.model)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Every tensor comes from the weight files (the families initialise themselves)."""

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, cache: Optional[Cache] = None,
                                      past_key_values: Optional[Cache] = None,
                                      attention_mask: Optional[torch.Tensor] = None, use_cache: Optional[bool] = None,
                                      **kwargs: Any) -> dict[str, Any]:
        """Only what `forward` reads: the tokens the cache has not seen yet, the cache, the mask.
        (transformers' generic version also inspects the forward's signature and builds position and
        mask inputs these models do not take, every step.)"""
        cache = cache if cache is not None else past_key_values
        seen = cache.get_seq_length() if cache is not None else 0
        return {"input_ids": input_ids[:, seen:], "cache": cache, "attention_mask": attention_mask, "use_cache": use_cache}

    def _output(self, logits: torch.Tensor, labels: Optional[torch.Tensor], cache: Optional[Cache]):
        trained = self.config.trained_vocab_size
        if trained is not None and trained < logits.shape[-1]:  # ids appended at export are never predicted
            logits = torch.cat([logits[..., :trained], torch.full_like(logits[..., trained:], -torch.inf)], dim=-1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})


class NeuroGraphForCausalLM(_NeuroGraphPreTrainedModel, GenerationMixin):
    """Attention families (Transformer, INL) with a `DynamicCache`."""

    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[Cache] = None, past_key_values: Optional[Cache] = None,
                labels: Optional[torch.LongTensor] = None, use_cache: Optional[bool] = None, **kwargs: Any):
        """input_ids [B, T] -> logits [B, T, V]; with a cache, the tokens continue after the cached ones.
        attention_mask [B, cached + T] (0: padding, left or right) hides padded tokens."""
        cache = cache if cache is not None else past_key_values
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        layers = [_KVCacheLayer(cache, i) for i in range(len(self.model.blocks))] if cache is not None else None
        return self._output(self.model(input_ids, layers, attention_mask), labels, cache)


class NeuroGraphRecurrentForCausalLM(_NeuroGraphPreTrainedModel, GenerationMixin):
    """Recurrent families (INN, Mamba stack, LSTM) with a `RecurrentStateCache`."""

    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the forward creates its RecurrentStateCache

    def __init__(self, config: NeuroGraphConfig):
        super().__init__(config)
        if not isinstance(self.model, RecurrentGeneration):
            raise TypeError(f"model.arch={config.arch} is not a recurrent family")

    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                cache: Optional[Cache] = None, past_key_values: Optional[Cache] = None,
                labels: Optional[torch.LongTensor] = None, use_cache: Optional[bool] = None, **kwargs: Any):
        """input_ids [B, T] -> logits [B, T, V]. Without a state the sequence is prefilled (a padded
        batch, attention_mask 0 at padding on the left or right, row by row without its padding:
        `prefill_padded`); with one, every token is one recurrent step."""
        cache = cache if cache is not None else past_key_values
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        padded = attention_mask is not None and not bool(attention_mask[:, -input_ids.shape[1]:].all())
        if cache is None and not use_cache:
            logits = self.model.prefill_padded(input_ids, attention_mask)[0] if padded else self.model(input_ids)
            return self._output(logits, labels, None)
        if cache is None:
            cache = RecurrentStateCache(self.model.state_batch_dim)
        if cache.state is None:
            logits, cache.state = (self.model.prefill_padded(input_ids, attention_mask) if padded
                                   else self.model.prefill(input_ids))
        else:
            steps = []
            for t in range(input_ids.shape[1]):
                step_logits, cache.state = self.model.decode_step(input_ids[:, t], cache.state)
                steps.append(step_logits)
            logits = torch.stack(steps, dim=1)
        cache.seen_tokens += input_ids.shape[1]
        return self._output(logits, labels, cache)
