"""ST-SimDiff's building blocks: the token graph, community and event detectors, centrality.

Community detectors are the swappable part (``CommunityDetector``, chosen by name in a config);
importing this package registers ``connected_components``, ``louvain`` and ``leiden``. The graph
builder, the event detector and the final trim are plain code configured through the strategies'
fields (``tau_sim``, ``spatial``, ``tau_diff``, ``event_percentile``, ...).
"""

from tokenreduce.graph.community import CommunityDetector
from tokenreduce.graph.components import ConnectedComponents, component_roots
from tokenreduce.graph.events import TemporalDifference
from tokenreduce.graph.modularity import Leiden, Louvain
from tokenreduce.graph.pruning import trim_or_fill
from tokenreduce.graph.token_graph import EdgeKind, SpatioTemporalGraphBuilder, TokenGraph

__all__ = [
    "CommunityDetector", "ConnectedComponents", "EdgeKind", "Leiden", "Louvain",
    "SpatioTemporalGraphBuilder", "TemporalDifference", "TokenGraph", "component_roots", "trim_or_fill",
]
