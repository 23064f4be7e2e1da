"""Density-peak clustering with k nearest neighbours (DPC-kNN), for many token sets at once.

HoliTom (static tokens of a window, contextual tokens of a frame) and FlashVID (the tokens a frame
keeps after temporal merging) cluster token sets with the DPC-kNN of Du et al. as both official
codes write it: distances ``||x_i - x_j|| / sqrt(D)``; density ``exp(-mean(d²))`` over the ``k``
nearest tokens (the token itself included, at distance 0); each token's distance to the nearest
token of strictly higher density (the largest distance of the set when there is none); score =
that distance x density; the ``clusters`` highest scores are the centres; every other token
belongs to its nearest centre.

Sets are rows of a padded ``[S, M, D]`` batch with a ``valid`` mask, so sets of different sizes
(and with different ``clusters``/``k``) run together. Distances are ``torch.cdist``'s, computed the
way upstream's call computes them for a set of that size: pair by pair up to 25 tokens, through a
matrix product above (on the set's ``M`` slots, so callers pad every set to one width, a frame's
token count, and a set's distances never depend on the other sets of a batch). Both
official codes add ``U(0, 1e-6)`` noise to the densities to break ties at random; here ties are
broken deterministically: equal densities are not each other's parent, equal scores and equal
distances prefer the lower index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokenreduce.selection import top_k_mask

MM_ABOVE = 25  # torch.cdist uses a matrix product for more vectors than this


@dataclass(frozen=True)
class Clusters:
    """DPC-kNN result for ``S`` sets of ``M`` slots.

    ``centers``: bool ``[S, M]``; ``assignment``: long ``[S, M]``, the slot of each valid token's
    centre (a centre is its own); ``distances``: fp32 ``[S, M, M]``.
    """

    centers: torch.Tensor
    assignment: torch.Tensor
    distances: torch.Tensor


def density_peak_clusters(features: torch.Tensor, valid: torch.Tensor, clusters: torch.Tensor,
                          neighbours: torch.Tensor) -> Clusters:
    """Cluster each row of ``features`` ``[S, M, D]`` (``valid`` bool ``[S, M]``) into
    ``clusters[s]`` clusters using ``neighbours[s]`` nearest tokens for the density (both long
    ``[S]``; ``1 <= neighbours[s]`` and ``clusters[s] <= `` the set's size)."""
    x = features.float()
    distances = set_distances(x, valid) / math.sqrt(x.shape[-1])
    pair = valid.unsqueeze(1) & valid.unsqueeze(2)
    nearest = torch.sort(distances.masked_fill(~valid.unsqueeze(1), float("inf")), dim=-1).values
    density = torch.zeros(valid.shape, dtype=torch.float32, device=x.device)
    for k in torch.unique(neighbours).tolist():  # at most a handful of distinct k
        rows = neighbours == k
        density[rows] = torch.mean(-(nearest[rows, :, :k] ** 2), dim=-1).exp()
    density = density.masked_fill(~valid, 0.0)
    largest = distances.masked_fill(~pair, float("-inf")).flatten(1).amax(dim=1)
    higher = (density.unsqueeze(1) > density.unsqueeze(2)) & pair
    to_higher = torch.where(higher, distances, largest[:, None, None]).amin(dim=-1)
    score = to_higher * density
    centers = top_k_mask(score, clusters, valid)
    to_center = distances.masked_fill(~centers.unsqueeze(1), float("inf"))
    assignment = to_center.argmin(dim=-1)  # first (lowest) slot on ties
    own = torch.arange(valid.shape[1], device=x.device).expand_as(assignment)
    assignment = torch.where(centers, own, assignment)
    return Clusters(centers, assignment, distances)


def set_distances(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """fp32 ``[S, M, M]`` Euclidean distances within each set (values at padding are meaningless).

    ``torch.cdist`` works pair by pair for at most ``MM_ABOVE`` vectors and through a matrix
    product above, which loses digits for near-equal tokens; sets of up to ``MM_ABOVE`` valid tokens
    are moved to the front and measured pair by pair, as upstream's call on the set alone would.
    """
    distances = torch.cdist(x, x)  # M > MM_ABOVE: the matrix product, as upstream for such sets
    small = (valid.sum(dim=1) <= MM_ABOVE).nonzero().flatten()
    if small.numel() and x.shape[1] > MM_ABOVE:
        order = torch.sort((~valid[small]).to(torch.int8), dim=1, stable=True).indices[:, :MM_ABOVE]
        front = x[small].gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        pairwise = torch.cdist(front, front, compute_mode="donot_use_mm_for_euclid_dist")
        rows = small.view(-1, 1, 1)
        distances[rows, order.unsqueeze(2), order.unsqueeze(1)] = pairwise
    return distances


def cluster_sums(values: torch.Tensor, assignment: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per centre slot, the sum of ``values`` ``[S, M, D]`` over ``members`` (bool ``[S, M]``)
    assigned to it, and their count: ``([S, M, D], [S, M])`` indexed by the centre's slot."""
    weights = members.to(values.dtype)
    sums = torch.zeros_like(values).scatter_add_(1, assignment.unsqueeze(-1).expand_as(values),
                                                  values * weights.unsqueeze(-1))
    counts = torch.zeros_like(weights).scatter_add_(1, assignment, weights)
    return sums, counts
