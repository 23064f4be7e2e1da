"""The community-detector interface: the one ST-SimDiff building block swapped by name in a config
(``{"name": "st_simdiff", "community": {"name": "leiden"}}``).

Registered detectors: ``connected_components`` (``components.py``), ``louvain`` and ``leiden``
(``modularity.py``); other packages add theirs through the ``tokenreduce.community`` entry-point
group.
"""

from __future__ import annotations

import abc

import torch

from tokenreduce.graph.token_graph import TokenGraph
from tokenreduce.interfaces import Component


class CommunityDetector(Component, abc.ABC):
    """Partitions the nodes of a token graph into communities."""

    @abc.abstractmethod
    def detect(self, graph: TokenGraph, edge_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Community label per node, long ``[B, N]``.

        Only edges with ``edge_mask`` (default: all) count. Labels are comparable within one
        sample only; a node without an edge is its own community.
        """
