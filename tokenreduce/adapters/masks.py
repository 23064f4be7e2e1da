"""Attention masks for a pruned sequence, in the format the model's attention backend expects.

The masks are built by transformers' own mask functions (``ALL_MASK_ATTENTION_FUNCTIONS``) from a
2-D key mask, so a pruned layer gets exactly what the model would build for a sequence of that
layout: ``None`` where sdpa can use ``is_causal``, a boolean mask for sdpa, an additive float mask
for eager.
"""

from __future__ import annotations

import torch

SUPPORTED_ATTENTION = ("sdpa", "eager")


def causal_mask_for(config, key_valid: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The causal mask of ``query_length`` queries that are the last slots of ``key_valid`` [B, K]."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

    implementation = config._attn_implementation
    if implementation not in SUPPORTED_ATTENTION:
        raise NotImplementedError(f"pruning inside the LLM supports attn_implementation in {SUPPORTED_ATTENTION}, "
                                  f"the model uses {implementation!r}; load it with attn_implementation='sdpa'")
    batch_size, kv_length = key_valid.shape
    return ALL_MASK_ATTENTION_FUNCTIONS[implementation](
        batch_size=batch_size,
        q_length=query_length,
        kv_length=kv_length,
        q_offset=kv_length - query_length,
        kv_offset=0,
        mask_function=causal_mask_function,
        attention_mask=key_valid,
        allow_is_causal_skip=True,
        dtype=dtype,
        config=config,
        use_vmap=False,
        device=key_valid.device,
    )
