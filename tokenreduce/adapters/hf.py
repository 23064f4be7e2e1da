"""The one seam between tokenreduce and transformers.

Every transformers-specific name the adapters rely on lives here: forward-argument names, the cache
argument (``past_key_values`` until 5.23, ``cache`` from 5.24) and the cache object's methods, the
outputs of the vision tower that ``generate`` hands to the prefill, the attention backend of a config,
the mask builders of ``masking_utils``, the rotary helpers of a modeling module, Qwen2.5-VL's window
index and Qwen3-VL's deepstack method. Each helper handles every version of ``TESTED_RANGE``, the range
the test suite runs on at both ends (``pyproject.toml`` declares the same range; a test keeps the two
equal). No other module of tokenreduce names a transformers internal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

#: The transformers versions the suite is run on, oldest and newest (``pyproject.toml``'s ``hf`` extra).
TESTED_RANGE = ">=5.16.1,<5.25"

# ----- forward-argument names ---------------------------------------------------------------------
INPUT_IDS = "input_ids"
INPUTS_EMBEDS = "inputs_embeds"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
HIDDEN_STATES = "hidden_states"
POSITION_EMBEDDINGS = "position_embeddings"
PIXEL_VALUES = "pixel_values"
PIXEL_VALUES_VIDEOS = "pixel_values_videos"
IMAGE_GRID_THW = "image_grid_thw"
VIDEO_GRID_THW = "video_grid_thw"
IMAGE_SIZES = "image_sizes"  # LLaVA: each image's size before any-resolution cropping
MM_TOKEN_TYPE_IDS = "mm_token_type_ids"  # which tokens are image / video placeholders
MM_TOKEN_TYPES = {"image": 1, "video": 2}  # the values of mm_token_type_ids (text is 0)
ENCODER_OUTPUTS = "mm_encoder_outputs"  # what generate passes to the prefill after encoding the media
VISUAL_POS_MASKS = "visual_pos_masks"  # Qwen3-VL deepstack
DEEPSTACK_VISUAL_EMBEDS = "deepstack_visual_embeds"
CU_SEQLENS = "cu_seqlens"  # Qwen vision attention: the bounds of its attention segments
CACHE_POSITION = "cache_position"  # the cache slots of a call's tokens (models that still take it)
OUTPUT_ATTENTIONS = "output_attentions"
LABELS = "labels"  # the targets a causal LM forward turns into ``loss``
LOGITS = "logits"
IGNORE_INDEX = -100  # a label the loss skips (transformers' ``ForCausalLMLoss``)
LOSS_ARGUMENTS = ("num_items_in_batch",)  # forward arguments a model passes on to its loss function
#: The cache argument of a forward, newest name first (5.24 renamed ``past_key_values`` to ``cache``).
CACHE_ARGUMENTS = ("cache", "past_key_values")

ATTENTION_BACKENDS = ("sdpa", "eager")  # the backends whose masks ``causal_mask`` builds


def call_arguments(args: tuple, kwargs: Mapping[str, Any], first: str = INPUT_IDS) -> dict[str, Any]:
    """A forward call's arguments by name; ``first`` names the one positional argument models take."""
    call = dict(kwargs)
    if args:
        call.setdefault(first, args[0])
    return call


def query_length(call: Mapping[str, Any]) -> int:
    """Tokens in the forward call ``call`` (from its ids or its embeddings)."""
    ids = call.get(INPUT_IDS)
    return int((ids if ids is not None else call[INPUTS_EMBEDS]).shape[1])


# ----- the KV cache -------------------------------------------------------------------------------
def cache_argument(call: Mapping[str, Any]) -> Any:
    """The cache a forward received, under whichever name this transformers version passes it."""
    for name in CACHE_ARGUMENTS:
        cache = call.get(name)
        if cache is not None:
            return cache
    return None


def output_cache(output: Any) -> Any:
    """The cache a model output carries (``cache`` from 5.24, ``past_key_values`` before)."""
    for name in CACHE_ARGUMENTS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def cache_length(cache: Any, layer: int = 0) -> int:
    """Tokens held in ``cache`` for decoder layer ``layer``."""
    return int(cache.get_seq_length(layer))


def cache_layers(cache: Any) -> int:
    """Decoder layers ``cache`` holds."""
    return len(cache.layers)


def cache_keyword(call: Mapping[str, Any]) -> str:
    """The name under which a decoder layer's call passes its cache (present even when ``None``);
    the newest name when the call has none."""
    return next((name for name in CACHE_ARGUMENTS if name in call), CACHE_ARGUMENTS[0])


def new_cache(config: Any) -> Any:
    """An empty dynamic KV cache for a decoder built from ``config``."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


def records_attention_weights(config: Any, call: Mapping[str, Any]) -> bool:
    """Whether the model returns its attention weights for this call (``output_attentions``, given
    or from the config): transformers records them with hooks on every attention call."""
    return bool(call.get(OUTPUT_ATTENTIONS, getattr(config, OUTPUT_ATTENTIONS, False)))


# ----- media ---------------------------------------------------------------------------------------
def pixel_argument(modality: str) -> str:
    """The forward argument carrying the pixels of ``modality`` (``"image"`` or ``"video"``)."""
    return PIXEL_VALUES_VIDEOS if modality == "video" else PIXEL_VALUES


def grid_argument(modality: str) -> str:
    """The forward argument carrying the ``(T, H, W)`` patch grids of ``modality`` (Qwen-style models)."""
    return VIDEO_GRID_THW if modality == "video" else IMAGE_GRID_THW


def encoded_media(call: Mapping[str, Any], modality: str) -> Any:
    """The vision-tower output of the call's images or videos when ``generate`` encoded them beforehand."""
    return (call.get(ENCODER_OUTPUTS) or {}).get(modality)


def encoded_features(encoded: Any) -> Any:
    """The LLM features of a vision-tower or ``get_*_features`` output (a tensor, or one view per
    video or image); a plain tensor is returned as it is."""
    return getattr(encoded, "pooler_output", encoded)


def video_metadata(**fields: Any) -> Any:
    """A transformers ``VideoMetadata`` (fps, frame count, sampled indices) for a processor call."""
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(**fields)


# ----- the loss of a forward with labels ----------------------------------------------------------
def causal_lm_loss(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The loss ``model`` computes for ``labels`` (``[B, L]``, ``IGNORE_INDEX`` skipped; each label is the
    target of the previous position's logits): the model's own ``loss_function``, as its forward would
    call it (``kwargs``: e.g. ``num_items_in_batch``)."""
    vocab_size = model.config.get_text_config().vocab_size
    return model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)


def with_loss(output: Any, loss: torch.Tensor) -> Any:
    """A copy of a model output with its ``loss`` set (the output's own field order kept)."""
    return type(output)(**{**output, "loss": loss})


# ----- attention ------------------------------------------------------------------------------------
def attention_implementation(config: Any) -> str:
    """The attention backend a model config selects (``"sdpa"``, ``"eager"``, ...)."""
    return config._attn_implementation


def set_attention_implementation(config: Any, implementation: str) -> None:
    """Select the attention backend of a model built from ``config``."""
    config._attn_implementation = implementation


def recurrent_mask(key_valid: torch.Tensor) -> torch.Tensor | None:
    """The 2-D padding mask a recurrent (linear-attention, state-space) decoder layer multiplies its input
    with, as ``masking_utils.create_recurrent_attention_mask`` builds it: ``None`` when nothing is padded."""
    return None if bool(key_valid.all()) else key_valid.long()


def causal_mask(config: Any, key_valid: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The causal mask of ``query_length`` queries that are the last slots of ``key_valid`` ``[B, K]``,
    built by transformers' own mask function for the model's backend: ``None`` where sdpa can use
    ``is_causal``, a boolean mask for sdpa, an additive float mask for eager."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

    implementation = attention_implementation(config)
    if implementation not in ATTENTION_BACKENDS:
        raise NotImplementedError(f"pruning inside the LLM supports attn_implementation in {ATTENTION_BACKENDS}, "
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


def _modeling_function(module: nn.Module, name: str, what: str) -> Callable:
    function = getattr(sys.modules[type(module).__module__], name, None)
    if function is None:
        raise TypeError(f"{type(module).__name__} has no {name} in {type(module).__module__}; {what}")
    return function


def rotary_sequence_dim(cos: torch.Tensor) -> int:
    """The sequence axis of the rotary ``(cos, sin)`` a decoder layer receives: ``[B, L, D]`` where the
    rotary embedding merges the M-RoPE rows itself (5.2x), ``[3, B, L, D]`` where the attention merges
    them (Qwen2-VL and Qwen2.5-VL before 5.2x)."""
    return cos.ndim - 2


def rotary_function(attention: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``rotate(q, k, cos, sin) -> (q, k)`` as a decoder attention module applies it: the modeling
    file's ``apply_rotary_pos_emb``, or, for position embeddings with unmerged M-RoPE rows, its
    ``apply_multimodal_rotary_pos_emb`` with the model's ``mrope_section``."""
    module = sys.modules[type(attention).__module__]
    plain = getattr(module, "apply_rotary_pos_emb", None)
    multimodal = getattr(module, "apply_multimodal_rotary_pos_emb", None)
    if plain is None and multimodal is None:
        raise TypeError(f"{type(attention).__name__} has no apply_rotary_pos_emb in {module.__name__}; the attention "
                        "probe supports rotary decoder layers (Llama/Qwen style)")

    def rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        if cos.ndim == 4 and multimodal is not None:
            return multimodal(q, k, cos, sin, attention.config.rope_parameters["mrope_section"])
        return plain(q, k, cos, sin)

    return rotate


def attention_queries(attention: nn.Module, hidden: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, L, heads, head_dim]``: a decoder attention's query states before its norm and rotary. A gated
    attention (Qwen3.5, Qwen3-Next) projects each head's query and output gate together; the gate is
    dropped."""
    states = attention.q_proj(hidden)
    heads = int(attention.config.num_attention_heads)
    if states.shape[-1] == 2 * heads * head_dim:
        return states.view(*hidden.shape[:2], heads, 2 * head_dim)[..., :head_dim]
    return states.view(*hidden.shape[:2], -1, head_dim)


def vision_rotary_function(attention: nn.Module) -> Callable:
    """The ``apply_rotary_pos_emb_vision`` of a packed vision attention module's modeling file."""
    return _modeling_function(attention, "apply_rotary_pos_emb_vision",
                              "encoder signals support Qwen-style rotary vision towers")


# ----- family specifics -----------------------------------------------------------------------------
def vision_window_index(grid_thw: torch.Tensor, visual: nn.Module) -> torch.Tensor:
    """Qwen2.5-VL: the order in which its windowed ViT sees the merged tokens of ``grid_thw``."""
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    return window_index


DEEPSTACK_METHOD = "_deepstack_process"  # Qwen3-VL: adds deepstack features after the first layers
PACK_IMAGE_FEATURES = "pack_image_features"  # LLaVA-NeXT family: crops -> base image + unpadded mosaic rows
IMAGE_NEWLINE = "image_newline"  # its argument: the embedding appended to every mosaic row


def wrap_method(owner: nn.Module, name: str, wrapper: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Replace the method ``name`` of ``owner`` by ``wrapper(original)`` on this instance only (a method,
    not a module: no hook reaches it); returns the undo."""
    original = getattr(owner, name)
    had_own = name in vars(owner)
    setattr(owner, name, wrapper(original))

    def restore() -> None:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)

    return restore


def wrap_deepstack(language_model: nn.Module, wrapper: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Wrap Qwen3-VL's deepstack method of ``language_model`` (``wrap_method``)."""
    return wrap_method(language_model, DEEPSTACK_METHOD, wrapper)
