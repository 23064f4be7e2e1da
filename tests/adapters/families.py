"""The family table: one row per supported model class, driving the adapter test matrix.

A row says which registered adapter serves the class, how to build a tiny random model of it and how
its processor lays out videos and images (``tiny_vlms``). ``test_adapters.py`` runs every row through
the matrix and fails when a registered adapter has a class without a row, so a new family is tested
by adding its row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tiny_vlms as tm


@dataclass(frozen=True)
class Family:
    """A model class under test.

    ``video`` / ``image`` / ``small_video`` are items of its prompt builder; ``mixed``: one batch may
    hold videos and images (GLM-4V's own forward cannot); ``eager``: also run the attention-backend
    checks under eager attention (the families that had them before; the probe test covers every row).
    """

    model_class: str
    adapter: str
    build: Callable
    prompt: Callable  # prompt(model, samples, start=0) -> (inputs, truth)
    video: tuple
    image: tuple
    small_video: tuple
    mixed: bool = True
    eager: bool = False

    def inputs(self, model, samples, start=0):
        return self.prompt(model, samples, start=start)

    def single_prompts(self):
        """Samples of one-sample prompts that together hold a video and an image (one prompt with both
        where the family mixes them)."""
        if self.mixed:
            return {"video+image": [[self.video, self.image]]}
        return {"video": [[self.video]], "image": [[self.image]]}

    def batches(self):
        """Two-sample, left-padded batches with both modalities in either order."""
        if self.mixed:
            return {"mixed": [[self.video, self.image], [self.image, self.small_video]]}
        return {"videos": [[self.video], [self.small_video]], "images": [[self.image], [self.image]]}


def _grid(style):
    return lambda model, samples, start=0: tm.grid_thw_prompt(style, samples, start=start)


def _llava(model, samples, start=0):
    return tm.llava_prompt(model, samples, start=start)


QWEN = dict(video=("video", (2, 4, 6)), image=("image", (1, 4, 4)), small_video=("video", (2, 4, 4)))
LLAVA = dict(video=("video", 3), image=("image", (8, 16)), small_video=("video", 3))

FAMILIES = {
    "qwen2_vl": Family("Qwen2VLForConditionalGeneration", "qwen2_vl", tm.qwen2_vl, _grid("qwen2"), eager=True,
                       **QWEN),
    "qwen2_5_vl": Family("Qwen2_5_VLForConditionalGeneration", "qwen2_vl", tm.qwen2_5_vl, _grid("qwen2"),
                         eager=True, **QWEN),
    "qwen3_vl": Family("Qwen3VLForConditionalGeneration", "qwen3_vl", tm.qwen3_vl, _grid("qwen3"), eager=True,
                       **QWEN),
    "qwen3_vl_moe": Family("Qwen3VLMoeForConditionalGeneration", "qwen3_vl", tm.qwen3_vl_moe, _grid("qwen3"),
                           **QWEN),
    "qwen3_5": Family("Qwen3_5ForConditionalGeneration", "qwen3_5", tm.qwen3_5, _grid("qwen3"), **QWEN),
    "qwen3_5_moe": Family("Qwen3_5MoeForConditionalGeneration", "qwen3_5", tm.qwen3_5_moe, _grid("qwen3"), **QWEN),
    # the released models' layout: three Gated-DeltaNet layers for every full-attention one
    "qwen3_5_3to1": Family("Qwen3_5ForConditionalGeneration", "qwen3_5",
                           lambda attn="sdpa", num_layers=8: tm.qwen3_5(attn, num_layers, linear_per_full=3),
                           _grid("qwen3"), **QWEN),
    "glm4v": Family("Glm4vForConditionalGeneration", "glm4v", tm.glm4v, _grid("glm"), mixed=False, **QWEN),
    "glm4v_moe": Family("Glm4vMoeForConditionalGeneration", "glm4v", tm.glm4v_moe, _grid("glm"), mixed=False,
                        **QWEN),
    "glm46v": Family("Glm46VForConditionalGeneration", "glm4v", tm.glm46v, _grid("glm"), mixed=False, **QWEN),
    "internvl": Family("InternVLForConditionalGeneration", "internvl", tm.internvl,
                       lambda model, samples, start=0: tm.internvl_prompt(samples, start=start),
                       video=("video", 3), image=("image", 2), small_video=("video", 2)),
    "video_llama3": Family("VideoLlama3ForConditionalGeneration", "video_llama3", tm.video_llama_3,
                           lambda model, samples, start=0: tm.video_llama_3_prompt(samples, start=start,
                                                                                   compressed=True),
                           video=("video", (3, 4, 4)), image=("image", (1, 4, 2)), small_video=("video", (2, 4, 4))),
    "llava_onevision": Family("LlavaOnevisionForConditionalGeneration", "llava_onevision", tm.llava_onevision,
                              _llava, eager=True, **LLAVA),
    "llava_next_video": Family("LlavaNextVideoForConditionalGeneration", "llava_next_video", tm.llava_next_video,
                               _llava, eager=True, **LLAVA),
}

#: adapters chosen by name only (no model classes) and the test module that covers each
NAMED_ONLY = {"generic": "test_generic_path"}
