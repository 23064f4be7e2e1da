"""GLM-4.1V, GLM-4.5V (MoE) and GLM-4.6V: the Qwen-style grid layout with every video frame on image tokens.

GLM's processor writes each video frame as ``<|begin_of_image|> <|image|>... <|end_of_image|> <t>``
inside ``<|begin_of_video|> ... <|end_of_video|>``: video tokens are image placeholder tokens, told
apart by ``mm_token_type_ids`` (2 for video, 1 for image). Grids come from ``image_grid_thw`` /
``video_grid_thw`` as for Qwen2-VL; the vision tower sees a video as one grid row per frame. Its
decoder layers normalise the attention and MLP outputs before adding them to the residual
(``post_self_attn_layernorm``, ``post_mlp_layernorm``; the MoE variant has neither), so a step placed
after the attention block sees the residual stream the layer's MLP reads. Encoder signals are the
means over the 2x2 patches the tower's strided convolution merges. The model's own forward locates
video features by image tokens, so a batch holds images or videos, not both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tokenreduce.adapters import hf
from tokenreduce.adapters.grid_thw import GridThwFamily
from tokenreduce.registry import register_adapter


@register_adapter("glm4v")
class Glm4vAdapter(GridThwFamily):
    """GLM-4.1V, GLM-4.5V (MoE) and GLM-4.6V (videos and images)."""

    model_classes: ClassVar[tuple[str, ...]] = ("Glm4vForConditionalGeneration", "Glm4vMoeForConditionalGeneration",
                                                "Glm46VForConditionalGeneration")
    mlp_output_names: ClassVar[tuple[str, ...]] = ("post_mlp_layernorm", "mlp")

    def placeholders(self, call: dict[str, Any], modality: str) -> torch.Tensor:
        types = call.get(hf.MM_TOKEN_TYPE_IDS)
        if types is None:
            raise ValueError("GLM-4V inputs need mm_token_type_ids (the processor returns them) to tell video tokens "
                             "from image tokens")
        return super().placeholders(call, "image") & (types == hf.MM_TOKEN_TYPES[modality])

    def feature_placeholders(self, call: dict[str, Any], encoding: str) -> torch.Tensor:
        return self.placeholders(call, encoding)
