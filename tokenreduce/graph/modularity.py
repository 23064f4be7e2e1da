"""``louvain`` and ``leiden``: modularity communities through a graph library.

CPU: igraph + leidenalg (``pip install 'tokenreduce[graph]'``). Louvain is igraph's
``community_multilevel`` (igraph's process-global random generator seeded for the call, under a
lock, so concurrent calls from several threads each get their own seed's partition), Leiden is leidenalg's
optimiser (seeded; ``iterations`` passes, 2 by default as in ``leidenalg.find_partition``, or
until a pass no longer improves when ``iterations <= 0``); both optimise the resolution-``γ``
modularity ``Σ_ij (A_ij - γ k_i k_j / 2m) δ(c_i, c_j)`` with edge weights = cosine similarity.
(leidenalg 0.12's optimiser without refinement, i.e. its own Louvain, crashes the interpreter.)
Each sample is its own graph (a loop over the batch); padding and tokens without edges are isolated nodes, i.e. their
own community. GPU: cuGraph's ``louvain``/``leiden`` when the graph is on CUDA and cuGraph is
installed (``backend="auto"``), or on request (``backend="cugraph"``). Labels are canonical: a
community is named by its smallest member's index. Weights must be non-negative (modularity is
undefined otherwise), so use a threshold ``tau_sim >= 0``.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from typing import Any, ClassVar, Literal

import torch

from tokenreduce.config import Config
from tokenreduce.errors import ConfigError, MissingDependencyError
from tokenreduce.graph.community import CommunityDetector
from tokenreduce.graph.segments import canonical_labels
from tokenreduce.graph.token_graph import TokenGraph
from tokenreduce.registry import register_community

MAX_PASSES = 50
_IGRAPH_RNG_LOCK = threading.Lock()  # guards igraph's process-global random generator


def _import_leidenalg() -> tuple[Any, Any]:
    try:
        import igraph
        import leidenalg
    except ImportError:
        raise MissingDependencyError("louvain/leiden communities on CPU need igraph and leidenalg: "
                                     "pip install 'tokenreduce[graph]'") from None
    return igraph, leidenalg


def _import_cugraph() -> tuple[Any, Any]:
    try:
        import cudf
        import cugraph
    except ImportError:
        raise MissingDependencyError("louvain/leiden communities on GPU need cuGraph: "
                                     "pip install 'tokenreduce[cugraph]' (CUDA 12)") from None
    return cudf, cugraph


class ModularityCommunities(CommunityDetector):
    """Shared driver of ``louvain`` and ``leiden``: subclasses give the CPU optimisation
    (``_optimise``) and say whether cuGraph should refine (Leiden) or not (Louvain)."""

    refine: ClassVar[bool] = True

    @dataclasses.dataclass
    class Config(Config):
        resolution: float = 1.0
        seed: int = 0
        backend: Literal["auto", "igraph", "cugraph"] = "auto"

        def validate(self) -> None:
            if not 0 < self.resolution < math.inf:
                raise ConfigError(f"{self.name}.resolution must be a finite number > 0, got {self.resolution}")

    def detect(self, graph: TokenGraph, edge_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones_like(graph.src, dtype=torch.bool) if edge_mask is None else edge_mask
        weight = graph.weight[keep]
        if bool((weight < 0).any()):
            raise ValueError(f"{self.registered_name} needs non-negative edge weights; the kept edges "
                             "include negative cosine similarities (use tau_sim >= 0)")
        sample = graph.edge_sample()[keep]
        src = graph.src[keep] % graph.num_nodes
        dst = graph.dst[keep] % graph.num_nodes
        use_gpu = self.config.backend == "cugraph" or (
            self.config.backend == "auto" and graph.device.type == "cuda" and _cugraph_available())
        run = self._cugraph_membership if use_gpu else self._leidenalg_membership
        labels = torch.stack([
            run(graph.num_nodes, src[sample == b], dst[sample == b], weight[sample == b])
            for b in range(graph.batch_size)
        ])
        every = torch.ones_like(labels, dtype=torch.bool)
        return canonical_labels(labels, every)

    def _leidenalg_membership(self, n: int, src: torch.Tensor, dst: torch.Tensor,
                              weight: torch.Tensor) -> torch.Tensor:
        igraph, leidenalg = _import_leidenalg()
        g = igraph.Graph(n=n, edges=list(zip(src.tolist(), dst.tolist())))  # tuples: 30x faster than lists
        membership = self._optimise(g, weight.double().cpu().tolist(), igraph, leidenalg)
        return torch.tensor(membership, dtype=torch.long, device=src.device)

    def _optimise(self, g: Any, weights: list[float], igraph: Any, leidenalg: Any) -> list[int]:
        """The membership list of the igraph graph ``g`` (CPU backend)."""
        raise NotImplementedError

    def _cugraph_membership(self, n: int, src: torch.Tensor, dst: torch.Tensor,
                            weight: torch.Tensor) -> torch.Tensor:
        cudf, cugraph = _import_cugraph()
        labels = torch.arange(n, device=src.device)
        if src.numel() == 0:
            return labels
        frame = cudf.DataFrame({"src": cudf.from_dlpack(src.contiguous()),
                                "dst": cudf.from_dlpack(dst.contiguous()),
                                "weight": cudf.from_dlpack(weight.double().contiguous())})
        g = cugraph.Graph(directed=False)
        g.from_cudf_edgelist(frame, source="src", destination="dst", edge_attr="weight")
        if self.refine:
            parts, _ = cugraph.leiden(g, resolution=self.config.resolution, random_state=self.config.seed)
        else:
            parts, _ = cugraph.louvain(g, resolution=self.config.resolution)
        vertex = torch.from_dlpack(parts["vertex"].to_dlpack()).to(src.device).long()
        part = torch.from_dlpack(parts["partition"].to_dlpack()).to(src.device).long()
        labels[vertex] = part + n  # nodes cuGraph saw get ids >= n, isolated nodes keep their own
        return labels


def _cugraph_available() -> bool:
    try:
        _import_cugraph()
    except MissingDependencyError:
        return False
    return True


@register_community("louvain")
class Louvain(ModularityCommunities):
    """Louvain modularity communities (Blondel et al., 2008), the paper's example detector."""

    refine: ClassVar[bool] = False

    def _optimise(self, g: Any, weights: list[float], igraph: Any, leidenalg: Any) -> list[int]:
        # igraph's generator is process-global (multilevel takes none per call): seeding and running
        # hold one lock, so concurrent calls each get exactly their own seed's partition
        with _IGRAPH_RNG_LOCK:
            igraph.set_random_number_generator(random.Random(self.config.seed))
            try:
                return g.community_multilevel(weights=weights, resolution=self.config.resolution).membership
            finally:
                igraph.set_random_number_generator(random)


@register_community("leiden")
class Leiden(ModularityCommunities):
    """Leiden modularity communities: Louvain plus a refinement that keeps communities connected."""

    refine: ClassVar[bool] = True

    @dataclasses.dataclass
    class Config(ModularityCommunities.Config):
        iterations: int = 2  # optimiser passes; <= 0: until a pass no longer improves

    def _optimise(self, g: Any, weights: list[float], igraph: Any, leidenalg: Any) -> list[int]:
        partition = leidenalg.RBConfigurationVertexPartition(
            g, weights=weights, resolution_parameter=self.config.resolution)
        optimiser = leidenalg.Optimiser()
        optimiser.set_rng_seed(self.config.seed)
        passes = self.config.iterations if self.config.iterations > 0 else MAX_PASSES
        for _ in range(passes):
            if optimiser.optimise_partition(partition) <= 0:
                break
        return partition.membership
