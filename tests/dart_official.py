"""A slow oracle of the official DART code (ZichenWen1/DART @ 5a19452, read from its fork
xqy1111111/DART: ``Qwen2_5-VL/Qwen2_5VL_DART/modeling_qwen2_5_vl_self.py``,
``DART.get_retained_image_token``), step by step on one sequence ``[video tokens, prompt tokens]``.

One documented convention replaces behaviour the official code leaves to chance: the pivots are
visited in increasing sequence order (upstream iterates a Python ``set``), and equal scores prefer
the lower index (upstream's ``topk`` order is unspecified).
"""

from __future__ import annotations

import torch


def official_retained(normed: torch.Tensor, keys: torch.Tensor, image_length: int, *, reduction_ratio: float,
                      pivot_image: int = 4, pivot_text: int = 4) -> set[int]:
    """``get_retained_image_token`` on one sequence whose first ``image_length`` tokens are the
    video: ``normed`` ``[L, D]`` (the final norm of layer K's input), ``keys`` ``[L, Dk]`` (layer
    K-1's keys, heads concatenated). Pivots are visited in increasing order (upstream: Python set
    order)."""
    quota = int(image_length * (1 - reduction_ratio) / (pivot_image + pivot_text))
    image_norm = torch.norm(keys[:image_length], p=1, dim=-1)
    text_norm = torch.norm(keys[image_length:], p=1, dim=-1)
    image = sorted(range(image_length), key=lambda i: (-float(image_norm[i]), i))[:pivot_image]
    text = [image_length + i for i in sorted(range(len(text_norm)), key=lambda i: (-float(text_norm[i]), i))[:pivot_text]]
    chosen = set(image + text)
    free = [i for i in range(image_length) if i not in image]
    for pivot in sorted(chosen):
        sims = -torch.nn.functional.cosine_similarity(normed[pivot], normed[free], dim=-1)
        top = sorted(range(len(free)), key=lambda j: (-float(sims[j]), free[j]))[:quota]
        picked = [free[j] for j in top]
        chosen.update(picked)
        free = [i for i in free if i not in picked]
    return chosen - set(text)
