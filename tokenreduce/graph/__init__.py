"""ST-SimDiff's building blocks: the token graph, community and event detectors, centrality.

Importing this package registers the graph builder (``spatio_temporal``), the community detectors
(``connected_components``, ``louvain``, ``leiden``), the event detector
(``temporal_difference``) and the budget pruner (``importance``).
"""

from tokenreduce.graph.components import ConnectedComponents, component_roots
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.modularity import Leiden, Louvain
from tokenreduce.graph.pruning import ImportancePruner
from tokenreduce.graph.token_graph import EdgeKind, SpatioTemporalGraphBuilder, TokenGraph

__all__ = [
    "ConnectedComponents", "EdgeKind", "ImportancePruner", "Leiden", "Louvain",
    "SpatioTemporalGraphBuilder", "TemporalDifference", "TokenGraph", "component_roots",
]
