"""What a model family declares: where things are in its models, and how its media map to grids.

A family is a subclass of ``ModelAdapter`` registered with ``@register_adapter(name)``. It declares

* which classes it supports (``model_classes``) and the rows of their position ids;
* where the language model, its decoder layers and, inside a layer, the softmax attention, the
  post-attention norm and the MLP output are (attribute paths; a layer without the attention is a
  recurrent layer: linear attention, state space);
* which modalities it maps onto grids and, per modality, the placeholder tokens and the
  ``MediaItem`` of each image or video (``media_items``);
* for the encoder stage, the vision tower, its blocks and attention modules, and how the signals of
  one vision-tower call pool onto the LLM tokens (``encoder_token_signals``).

Everything else is the shared engine: the session and its phases (``session.py``, ``schedule.py``,
``prefill.py``, ``decode.py``), media layouts (``media.py``), the encoder capture (``encoder.py``) and
the attention probe (``probe.py``). Transformers specifics go through ``hf.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from tokenreduce.adapters import hf
from tokenreduce.adapters.layout import VisualLayout
from tokenreduce.adapters.media import MediaItem, media_layout


def attribute(root: Any, path: str) -> Any:
    """``root.a.b.c`` for ``path="a.b.c"`` (``""``: ``root`` itself)."""
    for name in filter(None, path.split(".")):
        root = getattr(root, name)
    return root


class ModelAdapter:
    """Base class of model families; see the module docstring for what a subclass declares."""

    # ----- which models ----------------------------------------------------------------------
    model_classes: ClassVar[tuple[str, ...]] = ()
    registered_name: ClassVar[str | None] = None
    #: rows of the position ids the model's forward takes: 3 for M-RoPE, None for 1-D ``[B, L]``
    position_rows: ClassVar[int | None] = None

    # ----- where things are (attribute paths) --------------------------------------------------
    language_model_path: ClassVar[str] = "model.language_model"
    layers_path: ClassVar[str] = "layers"  # from the language model
    attention_name: ClassVar[str] = "self_attn"  # a decoder layer's softmax attention
    post_attention_norm_name: ClassVar[str] = "post_attention_layernorm"  # normalises residual + attention
    #: the module whose output the layer adds to its residual after the MLP (the first one a layer has)
    mlp_output_names: ClassVar[tuple[str, ...]] = ("mlp",)
    vision_tower_path: ClassVar[str | None] = None  # the module whose calls encode images and videos
    vision_blocks_path: ClassVar[str] = "blocks"  # from the vision tower
    vision_attention_name: ClassVar[str] = "attn"  # a vision block's attention

    # ----- media ---------------------------------------------------------------------------------
    #: modalities the family maps onto grids, in the order its forward encodes them
    modalities: ClassVar[tuple[str, ...]] = ("video",)
    #: modalities whose tower signals ``encoder_token_signals`` pools (encoder-stage steps)
    encoder_modalities: ClassVar[tuple[str, ...]] = ()
    #: a modality whose pixels the model encodes in another modality's tower call (InternVL: video
    #: frames are images), mapped to that modality
    encoded_as: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.capture = None  # the EncoderCapture while a session with encoder steps runs

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return any(klass.__name__ in cls.model_classes for klass in type(model).__mro__)

    @classmethod
    def capabilities(cls) -> dict[str, str]:
        """What the family supports, by heading: its classes, the media it reduces, the stages its steps can
        run at and the attention backends (``tokenreduce list adapter``, docs/models.md)."""
        stages = (["encoder"] if cls.encoder_modalities else []) + ["pre-LLM", "in-LLM"]
        return {"classes": ", ".join(cls.model_classes) or "any model, chosen by name",
                "media": ", ".join(cls.modalities), "stages": ", ".join(stages),
                "attention": ", ".join(hf.ATTENTION_BACKENDS)}

    # ----- resolved from the declaration -----------------------------------------------------------
    @property
    def top(self) -> nn.Module:
        """The module whose forward ``generate`` calls."""
        return self.model

    @property
    def language_model(self) -> nn.Module:
        return attribute(self.model, self.language_model_path)

    @property
    def layers(self) -> nn.ModuleList:
        return attribute(self.language_model, self.layers_path)

    @property
    def text_config(self) -> Any:
        return self.language_model.config

    def attention_of(self, layer: nn.Module) -> nn.Module | None:
        """The softmax attention of a decoder layer, or ``None`` for a recurrent layer."""
        module = getattr(layer, self.attention_name, None)
        return module if isinstance(module, nn.Module) else None

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` through the language model's final norm (what its LM head reads):
        ``Signal.NORMED``."""
        norm = getattr(self.language_model, "norm", None)
        if not isinstance(norm, nn.Module):
            raise TypeError(f"{type(self.language_model).__name__} has no final norm ('norm'); steps that "
                            "declare Signal.NORMED need one")
        return norm(hidden)

    def post_attention_norm_of(self, layer: nn.Module) -> nn.Module:
        """The norm a decoder layer applies to ``residual + attention`` before its MLP."""
        return _child(layer, self.post_attention_norm_name)

    def mlp_of(self, layer: nn.Module) -> nn.Module:
        """The module whose output the layer adds to ``residual + attention`` (its MLP, or the norm after it)."""
        name = next((n for n in self.mlp_output_names if isinstance(getattr(layer, n, None), nn.Module)),
                    self.mlp_output_names[0])
        return _child(layer, name)

    def language_model_device(self) -> torch.device:
        return next(self.language_model.parameters()).device

    @property
    def vision_tower(self) -> nn.Module | None:
        return None if self.vision_tower_path is None else attribute(self.model, self.vision_tower_path)

    def vision_blocks(self) -> nn.ModuleList:
        return attribute(self.vision_tower, self.vision_blocks_path)

    def vision_attention_of(self, block: nn.Module) -> nn.Module:
        return getattr(block, self.vision_attention_name)

    # ----- media (families override) ---------------------------------------------------------------
    def token_id(self, modality: str) -> int:
        """The placeholder token of ``modality`` (``config.video_token_id`` / ``image_token_id``)."""
        return int(getattr(self.model.config, f"{modality}_token_id"))

    def placeholders(self, call: dict[str, Any], modality: str) -> torch.Tensor:
        """``[B, S]`` bool: the positions that hold this modality's LLM tokens."""
        input_ids = call.get(hf.INPUT_IDS)
        if input_ids is None:
            raise ValueError(f"token reduction on {modality} inputs needs input_ids to locate their tokens")
        return input_ids == self.token_id(modality)

    def feature_placeholders(self, call: dict[str, Any], encoding: str) -> torch.Tensor:
        """``[B, S]``: the placeholders the features of ``encoding``'s tower call are placed on, in order."""
        return self.placeholders(call, encoding)

    def has_media(self, call: dict[str, Any], modality: str) -> bool:
        """Whether the forward call carries this modality (pixels, or features ``generate`` encoded)."""
        return call.get(hf.pixel_argument(modality)) is not None or hf.encoded_media(call, modality) is not None

    def media_items(self, call: dict[str, Any], modality: str, embeds: torch.Tensor) -> list[MediaItem]:
        """The items of ``modality`` in the call, in placeholder order (``embeds``: the language model's
        input embeddings, with the encoder features in place)."""
        raise NotImplementedError

    def carries_media(self, call: dict[str, Any], modalities: tuple[str, ...]) -> bool:
        """Whether the call carries media of ``modalities`` that the family maps onto grids."""
        return any(self.has_media(call, m) for m in self.modalities if m in modalities)

    def visual_layout(self, call: dict[str, Any], modalities: tuple[str, ...], embeds: torch.Tensor
                      ) -> VisualLayout | None:
        """The grids of the call's media of ``modalities`` (``embeds``: the language model's input)."""
        return media_layout(self, call, modalities, embeds)

    def prune_language_inputs(self, kwargs: dict[str, Any], index: torch.Tensor) -> None:
        """Prune extra per-token language-model inputs (``index`` ``[B, L']``: new slot -> old slot)."""

    # ----- the encoder stage (families with encoder_modalities override) -----------------------------
    def encoder_call_info(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What the family needs to remember about one vision-tower call (e.g. its grid)."""
        return None

    def encoder_token_signals(self, record: Any, layer: int, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(importance [n], keys [n, d])`` of one vision-tower call pooled onto the LLM tokens it makes,
        in the order the model places them on the placeholders (off-grid tokens included, any value)."""
        raise NotImplementedError

    def install(self, session: Any) -> list[Any]:
        """Patches beyond the session's hooks; returns callables that undo them."""
        return []


def _child(layer: nn.Module, name: str) -> nn.Module:
    module = getattr(layer, name, None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{type(layer).__name__} has no {name}: steps with position='after_attention' need "
                        "Llama/Qwen-style decoder layers (attention, residual, post_attention_layernorm, mlp, "
                        "residual); use position='before_layer'")
    return module
