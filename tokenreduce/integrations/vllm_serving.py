"""The vLLM plugin: tokenreduce strategies choose the video tokens vLLM keeps (the only module that knows vLLM).

vLLM prunes video tokens between the vision encoder and the LLM for the models that implement its
``SupportsMultiModalPruning`` interface (``--video-pruning-rate q``): the front end sizes each video's
prompt placeholders from ``q`` before the encoder runs, and the model's
``_postprocess_video_embeds_evs`` chooses which tokens fill them. This plugin reaches vLLM only
through its documented extension points:

- the ``vllm.general_plugins`` entry point ``register``, which vLLM calls in every process (front
  end, engine core, workers). When ``TOKENREDUCE_VLLM_STRATEGY`` is set it checks the strategy —
  an unknown or unservable one stops vLLM at start-up — and
- ``ModelRegistry.register_model`` of a subclass of each supported model class whose
  ``_postprocess_video_embeds_evs`` keeps the tokens the strategy selects, in the count vLLM
  reserved (``--video-pruning-method`` picks that count's formula, nothing else).

``TOKENREDUCE_VLLM_RECORD=path`` appends one JSON line per encoded video (grid, count, kept flat
indices, selection seconds). See docs/serving.md.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import torch

from tokenreduce.errors import ServingError
from tokenreduce.integrations.serving import ServingStrategy, VideoSelection

ENV_STRATEGY = "TOKENREDUCE_VLLM_STRATEGY"
ENV_RECORD = "TOKENREDUCE_VLLM_RECORD"

logger = logging.getLogger(__name__)

#: vLLM 0.32 architectures with video pruning -> (module under vllm.model_executor.models, class, how the
#: pruned video is laid out).
#: ``qwen2_5_vl``: kept tokens plus 4 M-RoPE channels; ``qwen3_vl``: per-frame timestamps, deepstack
#: and 5 channels. ``None``: the model prunes in its own layout, which the plugin does not fill yet —
#: with a strategy set it refuses to start rather than let vLLM run its own method.
_NANO = ("nano_nemotron_vl", "NemotronH_Nano_VL_V2", None)
ARCHITECTURES: dict[str, tuple[str, str, str | None]] = {
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
    "Exaone4_5_ForConditionalGeneration": ("exaone4_5", "Exaone4_5_ForConditionalGeneration", "qwen2_5_vl"),
    "OpenCUAForConditionalGeneration": ("opencua", "OpenCUAForConditionalGeneration", "qwen2_5_vl"),
    "Qwen3VLForConditionalGeneration": ("qwen3_vl", "Qwen3VLForConditionalGeneration", "qwen3_vl"),
    "Qwen3VLMoeForConditionalGeneration": ("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", "qwen3_vl"),
    "Qwen3_5ForConditionalGeneration": ("qwen3_5", "Qwen3_5ForConditionalGeneration", "qwen3_vl"),
    "Qwen3_5MoeForConditionalGeneration": ("qwen3_5", "Qwen3_5MoeForConditionalGeneration", "qwen3_vl"),
    "InternS1ProForConditionalGeneration": ("interns1_pro", "InternS1ProForConditionalGeneration", "qwen3_vl"),
    "Cosmos3ForConditionalGeneration": ("cosmos3", "Cosmos3ForConditionalGeneration", "qwen3_vl"),
    "InternS2PreviewForConditionalGeneration": ("interns2_preview", "InternS2PreviewForConditionalGeneration",
                                                "qwen3_vl"),
    "InternS2MobiusForConditionalGeneration": ("interns2_mobius", "InternS2MobiusForConditionalGeneration",
                                               "qwen3_vl"),
    "CohereCompassForConditionalGeneration": ("cohere_compass", "CohereCompassForConditionalGeneration", None),
    "NemotronH_Nano_VL_V2": _NANO,
    "NemotronH_Nano_Omni_Reasoning_V3": _NANO,
    "NemotronH_Super_Omni_Reasoning_V3": _NANO,
    "NemotronH_Omni_Reasoning_V3": _NANO,
}


def register() -> None:
    """The ``vllm.general_plugins`` entry point: with a strategy set, check it and install the models."""
    spec = os.environ.get(ENV_STRATEGY)
    if spec is None:
        return
    strategy = ServingStrategy.from_spec(spec, ENV_STRATEGY)  # raises at start-up in every process
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, f"{__name__}:{arch}")
    logger.info("tokenreduce: %s chooses the kept video tokens of %s", strategy.config.name,
                ", ".join(supported_architectures()))


def supported_architectures() -> list[str]:
    """The architectures whose kept video tokens a tokenreduce strategy chooses."""
    return [arch for arch, (_, _, layout) in ARCHITECTURES.items() if layout is not None]


class VideoPruner:
    """What one model instance needs to run the strategy: the strategy, the count rule and the record."""

    def __init__(self, strategy: ServingStrategy, vllm_config: Any) -> None:
        model_config = vllm_config.model_config
        pruning = model_config.multimodal_config.get_video_pruning_spec()
        if pruning is None:
            raise ServingError(f"{ENV_STRATEGY} is set but video pruning is off: pass --video-pruning-rate q "
                               "(LLM(..., video_pruning_rate=q)) with 0 < q < 1; the strategy keeps the "
                               "count vLLM reserves from q")
        self.strategy = strategy
        self.method, self.rate = pruning
        self.count_function = _retained_count_function(self.method)
        self.num_layers = int(model_config.hf_text_config.num_hidden_layers)
        self.record_path = os.environ.get(ENV_RECORD) or None

    @classmethod
    def from_environment(cls, vllm_config: Any) -> VideoPruner | None:
        """The pruner for the strategy set in this process, or None when none is set (vLLM's own method
        runs, as without the plugin)."""
        spec = os.environ.get(ENV_STRATEGY)
        return None if spec is None else cls(ServingStrategy.from_spec(spec, ENV_STRATEGY), vllm_config)

    def select(self, features: torch.Tensor, grid_thw: list[int], merge: int) -> VideoSelection:
        """The kept tokens of one video: ``features`` ``[N, D]`` in grid order, ``grid_thw`` the
        encoder's (T, H, W) patch grid, ``merge`` its spatial merge size."""
        t, h, w = (int(v) for v in grid_thw)
        grid = (t, h // merge, w // merge)
        count = self.count_function(grid[1] * grid[2], t, self.rate)
        from vllm.utils.gpu_sync_debug import gpu_sync_allowed

        with gpu_sync_allowed():  # choosing tokens reads counts and masks on the host
            selection = self.strategy.select(features, grid, count, self.num_layers)
        if self.record_path is not None and _is_first_rank():
            self.strategy.record(self.record_path, grid, count, selection)
        return selection


def _retained_count_function(method: str):
    """vLLM's count of kept tokens for ``method`` (the formula its processor sized the prompt with)."""
    from vllm.multimodal.video_prune import evs, vidcom2

    functions = {"evs": evs.compute_retained_tokens_count, "vidcom2": vidcom2.compute_retained_tokens_count}
    if method not in functions:
        raise ServingError(f"--video-pruning-method {method!r} is not known to tokenreduce; use one of "
                           f"{', '.join(functions)}")
    return functions[method]


def _is_first_rank() -> bool:
    from vllm.distributed import get_tensor_model_parallel_rank

    try:
        return get_tensor_model_parallel_rank() == 0
    except AssertionError:  # no tensor-parallel group (a model built outside an engine)
        return True


def _kept_embeddings(emb: torch.Tensor, selection: VideoSelection, dim: int) -> torch.Tensor:
    """The kept rows of ``emb``; merged features replace their first ``dim`` channels."""
    if selection.features is not None:
        emb = torch.cat([selection.features.to(emb.dtype), emb[:, dim:]], dim=1)
    return emb[selection.keep.to(emb.device)]


class _Qwen25Layout:
    """Qwen2.5-VL layout: kept tokens followed by 4 M-RoPE channels (t, h, w, grid width)."""

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        if self._tokenreduce is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        from vllm.multimodal.video_prune.evs import compute_mrope_for_media

        second_per_grid_ts = video_input.get("second_per_grid_ts")
        if second_per_grid_ts is None:
            raise ValueError("second_per_grid_ts is required when video_pruning_rate > 0")
        merge = self.visual.spatial_merge_size
        tokens_per_second = self.config.vision_config.tokens_per_second
        out = []
        for emb, size, seconds in zip(video_embeds_split, video_input["video_grid_thw"].tolist(),
                                      second_per_grid_ts.long()):
            selection = self._tokenreduce.select(emb, size, merge)
            positions = compute_mrope_for_media(size, merge, tokens_per_second=tokens_per_second,
                                                video_second_per_grid=seconds.item())
            kept = _kept_embeddings(emb, selection, emb.shape[1])
            out.append(torch.cat([kept, positions.to(emb.device)[selection.keep.to(emb.device)]], dim=1))
        return tuple(out)


class _Qwen3Layout:
    """Qwen3-VL layout: per-frame timestamp text, deepstack channels after the first ``visual_dim``."""

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        if self._tokenreduce is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        merge = self.visual.spatial_merge_size
        out = []
        for index, (emb, size) in enumerate(zip(video_embeds_split, video_input["video_grid_thw"].tolist())):
            selection = self._tokenreduce.select(emb[:, :self.visual_dim], size, merge)
            t = int(size[0])
            out.append(self._create_final_video_embeddings(
                video_embeddings=_kept_embeddings(emb, selection, self.visual_dim),
                num_tokens_per_frame=selection.keep.view(t, -1).sum(dim=1).tolist(),
                timestamps=video_input.timestamps[index], video_grid_thw=size,
                retention_mask=selection.keep.to(emb.device)))
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """vLLM's recomputation, told where each video's frames start.

        transformers >= 5.10 processors keep the prompt's own ``<|vision_start|>`` before a video's
        first timestamp (``<vs> <0.5 seconds> <vs> frame <ve> … <ve>``); vLLM 0.32 takes that outer
        marker for the first frame's and places the video before the prompt's start. Here the outer
        markers — a vision start followed by neither media nor a vision end — read as plain text.
        """
        if self._tokenreduce is not None:
            input_ids = _outer_video_starts_as_text(input_ids, self.config)
        return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions,
                                                 num_computed_tokens)


def _outer_video_starts_as_text(input_ids, config):
    """``input_ids`` with every vision start that opens no media (not followed by a video or image
    token or a vision end) replaced by the vision-end id, which vLLM's position code reads as text."""
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.tensor(input_ids, dtype=torch.long)
    opens_media = torch.isin(ids[1:], torch.tensor([config.video_token_id, config.image_token_id,
                                                    config.vision_end_token_id], device=ids.device))
    outer = torch.zeros_like(ids, dtype=torch.bool)
    outer[:-1] = (ids[:-1] == config.vision_start_token_id) & ~opens_media
    if not bool(outer.any()):
        return input_ids
    ids = ids.masked_fill(outer, config.vision_end_token_id)
    return ids if isinstance(input_ids, torch.Tensor) else ids.tolist()


LAYOUTS = {"qwen2_5_vl": _Qwen25Layout, "qwen3_vl": _Qwen3Layout}


def _model_class(architecture: str) -> type:
    """vLLM's class for ``architecture`` with the tokenreduce layout mixed in (or refusing to start)."""
    module_name, class_name, layout = ARCHITECTURES[architecture]
    base = getattr(importlib.import_module(f"vllm.model_executor.models.{module_name}"), class_name)
    if layout is None:
        def refuse(self, *, vllm_config, prefix: str = "") -> None:
            if os.environ.get(ENV_STRATEGY) is not None:
                raise ServingError(f"{ENV_STRATEGY} is set but tokenreduce cannot yet fill the pruned video layout "
                                   f"of {architecture}; unset it to use vLLM's own --video-pruning-method, or "
                                   f"serve one of {', '.join(supported_architectures())}")
            base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        return type(architecture, (base,), {"__init__": refuse, "__module__": __name__})

    def init(self, *, vllm_config, prefix: str = "") -> None:
        pruner = VideoPruner.from_environment(vllm_config)  # before the weights: errors come early
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        self._tokenreduce = pruner

    return type(architecture, (LAYOUTS[layout], base), {"__init__": init, "__module__": __name__})


_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """``module:Architecture`` as vLLM's lazy registry imports it; built on first use."""
    if name not in ARCHITECTURES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        _CLASSES[name] = _model_class(name)
    return _CLASSES[name]
