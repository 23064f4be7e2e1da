"""``evs`` and ``vidcom2`` with ``prune_ratio`` against vLLM's own functions (vLLM 0.32).

vLLM prunes one video at a time on its merged embeddings ``[T·H·W, D]`` (``video_size_thw`` in
patches before the spatial merge); tokenreduce runs a batch of such videos as ``[B, T, H, W, D]``.
"""

from __future__ import annotations

import pytest
import torch
from factories import VIDEO_KINDS, structured_video
from vllm.multimodal.video_prune import evs as vllm_evs
from vllm.multimodal.video_prune import vidcom2 as vllm_vidcom2

import tokenreduce as tr

MERGE = 2  # Qwen2.5-VL / Qwen3-VL spatial merge size
VLLM = {"evs": vllm_evs, "vidcom2": vllm_vidcom2}
GRIDS = [(6, 4, 5, 16), (9, 3, 3, 9), (4, 1, 1, 4), (1, 3, 2, 8), (3, 8, 9, 70), (16, 6, 6, 64)]


@pytest.mark.parametrize("name", sorted(VLLM))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_kept_set_is_vllms(name, kind, dtype):
    for t, h, w, d in GRIDS:
        videos = torch.stack([structured_video(kind, t, h, w, d, seed=s, dtype=dtype) for s in range(3)])
        for q in (0.3, 0.7, 0.9, 0.99):
            reduction = tr.build(name, prune_ratio=q)(tr.VisualTokens(videos))
            for b in range(3):
                mask = VLLM[name].compute_retention_mask(videos[b].reshape(-1, d), (t, MERGE * h, MERGE * w),
                                                         MERGE, q)
                assert torch.equal(reduction.keep_mask[b], mask), (t, h, w, d, q, b)


@pytest.mark.parametrize("name", sorted(VLLM))
def test_planned_count_is_the_count_vllm_reserves(name):
    for t, h, w in [(1, 1, 1), (2, 3, 4), (8, 13, 13), (50, 1, 2), (5, 4, 5), (64, 12, 12)]:
        tokens = tr.VisualTokens(torch.zeros(1, t, h, w, 1))
        for q in (0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 0.95, 0.99):
            planned = tr.build(name, prune_ratio=q).planned_counts(tokens).tolist()
            assert planned == [VLLM[name].compute_retained_tokens_count(h * w, t, q)], (t, h, w, q)
