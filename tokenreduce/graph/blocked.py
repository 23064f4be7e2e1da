"""Row-blocked fp32 kernels over ``[M, D]`` token features (any float dtype in, fp32 out).

On CPU the features of a 64-frame video (``M*D`` ~ 39 M floats) do not fit in cache, and the
unblocked ``(a * b).sum(-1)`` of two shifted views is memory bound: it writes the whole product
before reducing it. Working on blocks of ``BLOCK_ROWS`` contiguous rows keeps each block in cache
and is 5-6x faster (numbers in docs/performance.md). The block loop runs ``M / BLOCK_ROWS`` times
whatever the grid is; it is a memory tiling, not a loop over frames, rows or tokens. On CUDA the
whole matrix is one block. bf16/fp16 blocks are converted to fp32 before any product, so every
dot product and norm accumulates in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

BLOCK_ROWS = 256


def row_blocks(num_rows: int, device: torch.device) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges that tile ``[0, num_rows)``."""
    step = num_rows if device.type != "cpu" else BLOCK_ROWS
    step = max(step, 1)
    for start in range(0, num_rows, step):
        yield start, min(start + step, num_rows)


def norms_and_shifted_dots(flat: torch.Tensor, shifts: Sequence[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One pass over ``flat`` ``[M, D]``: fp32 ``1/||x||`` per row (0 for an all-zero row, so its
    cosine with anything is 0) and, for each shift ``k``, fp32 ``[M - k]`` with
    ``dot(flat[n], flat[n + k])``."""
    rows = flat.shape[0]
    norms = torch.empty(rows, dtype=torch.float32, device=flat.device)
    dots = {k: torch.empty(max(rows - k, 0), dtype=torch.float32, device=flat.device) for k in shifts}
    largest = max(shifts, default=0)
    for start, stop in row_blocks(rows, flat.device):
        block = flat[start:min(stop + largest, rows)].float()
        norms[start:stop] = torch.linalg.vector_norm(block[:stop - start], dim=1)
        for k in shifts:
            end = min(stop, rows - k)
            if end > start:
                dots[k][start:end] = torch.linalg.vecdot(block[:end - start], block[k:k + end - start])
    inverse = torch.zeros_like(norms)
    nonzero = norms > 0
    inverse[nonzero] = 1.0 / norms[nonzero]
    return inverse, dots


def segment_sums(flat: torch.Tensor, scale: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """fp32 ``[S, D]``: ``sums[s] = Σ scale[r] * flat[r]`` over the rows ``r`` with ``segment[r] == s``.

    ``segment`` is long ``[M]``; rows with ``segment == num_segments`` belong to no segment. Rows are
    read in contiguous blocks (no gather of the features). With ``scale`` the inverse norms
    these are the per-community sums of normalised features.
    """
    sums = torch.zeros(num_segments + 1, flat.shape[1], dtype=torch.float32, device=flat.device)
    for start, stop in row_blocks(flat.shape[0], flat.device):
        block = flat[start:stop].float() * scale[start:stop].unsqueeze(1)
        sums.index_add_(0, segment[start:stop], block)
    return sums[:num_segments]


def dots_with_segment_sums(flat: torch.Tensor, scale: torch.Tensor, segment: torch.Tensor,
                           sums: torch.Tensor) -> torch.Tensor:
    """fp32 ``[M]``: ``scale[r] * dot(flat[r], sums[segment[r]])`` (0 where ``segment[r] == S``)."""
    padded = torch.cat([sums, sums.new_zeros(1, sums.shape[1])])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for start, stop in row_blocks(flat.shape[0], flat.device):
        dots = torch.linalg.vecdot(flat[start:stop].float(), padded[segment[start:stop]])
        out[start:stop] = dots * scale[start:stop]
    return out


def next_frame_cosine(features: torch.Tensor) -> torch.Tensor:
    """fp32 ``[B, T-1, H, W]``: cosine of every token of ``features`` ``[B, T, H, W, D]`` with the
    token at its position in the next frame (ST-SimDiff's temporal edge weight; 0 with a zero
    vector). Callers mask pairs that involve padding."""
    b, t, h, w, d = features.shape
    frame = h * w
    flat = features.reshape(b * t * frame, d)
    inverse, dots = norms_and_shifted_dots(flat, [frame])
    later = torch.cat([dots[frame], dots[frame].new_zeros(frame)]) * inverse * inverse.roll(-frame)
    return later.reshape(b, t, h, w)[:, :-1]
