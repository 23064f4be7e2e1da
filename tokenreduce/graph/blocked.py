"""fp32 kernels over ``[M, D]`` token features (any float dtype in, fp32 out), near the memory limit.

The selection's cost is reading the features: 64 frames of 13x13 tokens at d = 3584 are 155 MB,
and one read of them takes ~12 ms on one CPU core. These kernels read them three times in all
(the graph's norms and neighbour dots; the per-community sums; each token's dot with its
community sum) and compute nothing else proportional to ``M * D``; none of them loops over
tokens or communities, and none synchronises with the host per community.

- Row-wise dot products on CPU run over blocks of ``BLOCK_ROWS`` contiguous rows (so that a block
  and its neighbours are still in cache for the next dot) through NumPy's ``vecdot``: one BLAS
  ``sdot`` per row, which multiplies and adds in one pass and writes nothing but the result.
  ``torch.linalg.vecdot`` writes the whole product before summing it and is ~3x slower on one
  thread. The block loop runs ``M / BLOCK_ROWS`` times whatever the grid is; it is a memory
  tiling, not a loop over frames, rows or tokens. On other devices torch computes each product
  over the whole matrix at once.
- Community sums of fp32 features are one ``embedding_bag`` (a gather-and-sum kernel that reads
  each member row once, in ascending row order within each community); other dtypes are
  converted block by block and summed with ``index_add_``.
- Dots of chosen pairs of rows (a token with its community sum) are one sampled matrix product
  (``pair_dots``), which reads both rows in place instead of gathering copies.

A row's dot product does not depend on where the row sits (in a block, in the sampled product),
so identical tokens get bit-identical results and their ties stay ties. bf16/fp16 rows are
converted to fp32 before any product, so every dot product, norm and sum accumulates in fp32.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

BLOCK_ROWS = 128

_vecdot = getattr(np, "vecdot", None) or (  # NumPy < 2.0: the same sdot per row through matmul
    lambda a, b, out: np.matmul(a[..., None, :], b[..., :, None], out=out[..., None, None]))


def row_blocks(num_rows: int, device: torch.device) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges that tile ``[0, num_rows)``: ``BLOCK_ROWS`` rows on CPU, one
    range elsewhere."""
    step = max(num_rows if device.type != "cpu" else BLOCK_ROWS, 1)
    for start in range(0, num_rows, step):
        yield start, min(start + step, num_rows)


def host_rows(flat: torch.Tensor) -> Callable[[int, int], np.ndarray]:
    """fp32 NumPy rows ``[start, stop)`` of the CPU tensor ``flat`` (views when it is fp32)."""
    if flat.dtype == torch.float32:
        array = flat.detach().numpy()
        return lambda start, stop: array[start:stop]
    return lambda start, stop: flat[start:stop].detach().float().numpy()


def norms_and_shifted_dots(flat: torch.Tensor, shifts: Sequence[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One pass over ``flat`` ``[M, D]``: fp32 ``1/||x||`` per row (0 for an all-zero row, so its
    cosine with anything is 0) and, for each shift ``k``, fp32 ``[M - k]`` with
    ``dot(flat[n], flat[n + k])``."""
    rows = flat.shape[0]
    if flat.device.type != "cpu":
        x = flat.float()
        squares = torch.linalg.vecdot(x, x)
        dots = {k: torch.linalg.vecdot(x[:max(rows - k, 0)], x[k:]) for k in shifts}
    else:
        squares = torch.empty(rows, dtype=torch.float32)
        dots = {k: torch.empty(max(rows - k, 0), dtype=torch.float32) for k in shifts}
        squares_out, dots_out = squares.numpy(), {k: v.numpy() for k, v in dots.items()}
        rows_of, largest = host_rows(flat), max(shifts, default=0)
        for start, stop in row_blocks(rows, flat.device):
            block = rows_of(start, min(stop + largest, rows))
            _vecdot(block[:stop - start], block[:stop - start], out=squares_out[start:stop])
            for k in shifts:
                end = min(stop, rows - k)
                if end > start:
                    _vecdot(block[:end - start], block[k:k + end - start], out=dots_out[k][start:end])
    inverse = torch.zeros_like(squares)
    nonzero = squares > 0
    inverse[nonzero] = 1.0 / squares[nonzero].sqrt()
    return inverse, dots


def member_blocks(num_rows: int, rows: torch.Tensor, step: int) -> Iterator[tuple[int, int, int]]:
    """``(start, lo, hi)`` for the row blocks ``[start, start + step)`` that hold some of ``rows``
    (ascending): ``rows[lo:hi]`` are the ones inside."""
    edges = torch.arange(0, num_rows + step, step, device=rows.device)
    bounds = torch.searchsorted(rows, edges).tolist()
    for start, lo, hi in zip(range(0, num_rows, step), bounds, bounds[1:]):
        if hi > lo:
            yield start, lo, hi


def segment_sums(flat: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, segment: torch.Tensor,
                 num_segments: int) -> torch.Tensor:
    """fp32 ``[S, D]``: ``sums[s] = Σ scale[r] * flat[r]`` over the member rows ``r`` of segment ``s``.

    ``rows`` long ``[R]`` ascending, ``segment`` long ``[R]`` in ``[0, S)``. With ``scale`` the
    inverse norms these are the per-community sums of normalised features; each sum adds its
    rows in ascending row order.
    """
    if flat.dtype == torch.float32 and rows.numel():
        members = rows[torch.argsort(segment, stable=True)]
        counts = torch.bincount(segment, minlength=num_segments)
        return F.embedding_bag(members, flat, counts.cumsum(0) - counts, mode="sum",
                               per_sample_weights=scale[members])
    sums = torch.zeros(num_segments, flat.shape[1], dtype=torch.float32, device=flat.device)
    step = BLOCK_ROWS if flat.device.type == "cpu" else max(flat.shape[0], 1)
    for start, lo, hi in member_blocks(flat.shape[0], rows, step):
        block = flat[start:start + step][rows[lo:hi] - start].float() * scale[rows[lo:hi]].unsqueeze(1)
        sums.index_add_(0, segment[lo:hi], block)
    return sums


def pair_dots(left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[P]``: ``dot(left[rows[p]], right[cols[p]])`` for pairs sorted by ``(row, col)``, no pair twice.

    ``left`` ``[M, D]`` and ``right`` ``[S, D]`` share a dtype (fp32 or fp64, kept). On CPU this is
    one sampled matrix product (``torch.sparse.sampled_addmm``): only the requested entries of
    ``left @ right.T`` are computed, each a vectorised dot of two rows read in place, instead of
    gathering copies of the rows first (2x faster with hundreds of distinct right rows). A pair's
    dot does not depend on the other pairs, so identical rows give bit-identical dots. Elsewhere a
    gather and ``vecdot``.
    """
    if left.device.type != "cpu":
        return torch.linalg.vecdot(left[rows], right[cols])
    if rows.numel() == 0:
        return torch.zeros(0, dtype=left.dtype)
    crow = torch.zeros(left.shape[0] + 1, dtype=torch.long).index_add_(0, rows + 1, torch.ones_like(rows))
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the pattern is only an index
        warnings.filterwarnings("ignore", category=UserWarning, message=".*[Ss]parse CSR.*")
        pattern = torch.sparse_csr_tensor(crow.cumsum(0), cols, torch.zeros(rows.shape[0], dtype=left.dtype),
                                          size=(left.shape[0], right.shape[0]), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values()


def dots_with_segment_sums(flat: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, segment: torch.Tensor,
                           sums: torch.Tensor) -> torch.Tensor:
    """fp32 ``[R]``: ``scale[r] * dot(flat[r], sums[s])`` for each member row ``r`` (ascending) and
    its segment ``s``."""
    return pair_dots(flat.float(), sums, rows, segment) * scale[rows]


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
