"""Model adapters: make a Hugging Face model really skip the visual tokens a reducer drops.

Importing this package registers the built-in adapters (one module per model family).
"""

from tokenreduce.adapters import (  # noqa: F401  (registers the adapters)
    generic, glm4v, internvl, llava, qwen3_5, qwen3_vl, qwen_vl, video_llama3)
from tokenreduce.adapters.media import MediaItem
from tokenreduce.adapters.base import ModelAdapter
from tokenreduce.adapters.generic import GenericDecoderAdapter, contiguous_video, reduce_sequence
from tokenreduce.adapters.layout import SequenceLayout, VideoSpan, VisualLayout
from tokenreduce.adapters.llm_input import ReducedInput
from tokenreduce.adapters.probe import AttentionInputs, last_query_attention
from tokenreduce.adapters.session import ReductionSession

__all__ = ["AttentionInputs", "GenericDecoderAdapter", "MediaItem", "ModelAdapter", "ReducedInput", "ReductionSession",
           "SequenceLayout", "VideoSpan", "VisualLayout", "contiguous_video", "last_query_attention",
           "reduce_sequence"]
