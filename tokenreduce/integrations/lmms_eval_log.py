"""Per-sample kept-token counts and reduction time during an evaluation, written as JSONL.

``ReductionRecorder`` watches a reducer while a model generates: it wraps the reducer's (and its
steps') ``reduce``/``step`` methods on the instances for the duration of a ``with`` block, so it sees
every ``Reduction`` an adapter obtains without knowing the adapter, and restores the methods on exit.
Nested calls (a pipeline running its steps) count once, at the outermost call.

``ReductionLog`` collects one record per evaluated sample and writes them, gathered from every
data-parallel rank, to one JSONL file next to the lmms-eval results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tokenreduce.tokens import Reduction


@dataclasses.dataclass(frozen=True)
class ReductionCall:
    """One outermost reducer call: per-row kept/eligible counts and its wall time."""

    step: int
    method: str
    kept: list[int]
    total: list[int]
    seconds: float


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class ReductionRecorder:
    """Record the reductions ``reducer`` makes inside ``with recorder.recording():``."""

    def __init__(self, reducer: Any) -> None:
        self.reducer = reducer
        self.calls: list[ReductionCall] = []
        self._depth = 0

    def _targets(self) -> list[Any]:
        seen: dict[int, Any] = {}
        for target in (self.reducer, *self.reducer.steps()):
            seen.setdefault(id(target), target)
        return list(seen.values())

    def _wrap(self, step: int, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            outermost = self._depth == 0
            if outermost:
                _synchronize()
            start = time.perf_counter()
            self._depth += 1
            try:
                result = method(*args, **kwargs)
            finally:
                self._depth -= 1
            if outermost and isinstance(result, Reduction):
                _synchronize()
                self.calls.append(ReductionCall(
                    step=step,
                    method=name,
                    kept=[int(k) for k in result.kept_counts().tolist()],
                    total=[int(n) for n in result.valid.sum(dim=1).tolist()],
                    seconds=time.perf_counter() - start,
                ))
            return result

        return recorded

    @contextlib.contextmanager
    def recording(self) -> Iterator[ReductionRecorder]:
        """Start with no calls; watch ``reduce``/``step`` of the reducer and its steps until exit."""
        self.calls = []
        patched: list[tuple[Any, str]] = []
        try:
            for index, target in enumerate(self._targets()):
                for name in ("reduce", "step"):
                    method = getattr(target, name, None)
                    if callable(method) and name not in vars(target):
                        setattr(target, name, self._wrap(index, name, method))
                        patched.append((target, name))
            yield self
        finally:
            for target, name in patched:
                delattr(target, name)


def per_sample(calls: Sequence[ReductionCall], batch_size: int, one_visual_each: bool = True) -> list[dict[str, Any]]:
    """Kept/total visual tokens and reduction seconds for each of ``batch_size`` samples of one ``generate``.

    Calls form chains, one per token grid: a ``reduce`` call that does not come after the previous
    call's step (in step order) starts a new chain; later steps and layer-wise ``step`` calls continue
    it. A chain's total is its first call's eligible count and its kept count its last call's.
    Rows are attributed to samples when there is one sample, or when every sample has one visual
    (``one_visual_each``) and every chain has one row per sample; otherwise they cannot be split
    safely (adapters batch the grids of one shape together) and are ``None``.
    """
    seconds = sum(call.seconds for call in calls)
    if not calls:
        return [{"visual_tokens": None, "kept_tokens": None, "reduction_seconds": 0.0}
                for _ in range(batch_size)]
    chains: list[list[ReductionCall]] = []
    for call in calls:
        if not chains or (call.method == "reduce" and call.step <= chains[-1][-1].step):
            chains.append([call])
        else:
            chains[-1].append(call)
    totals = [chain[0].total for chain in chains]
    kept = [chain[-1].kept for chain in chains]
    if batch_size > 1 and one_visual_each and all(len(rows) == batch_size for rows in totals):
        per_total = [sum(rows[i] for rows in totals) for i in range(batch_size)]
        per_kept = [sum(rows[i] for rows in kept) for i in range(batch_size)]
    elif batch_size == 1:
        per_total, per_kept = [sum(map(sum, totals))], [sum(map(sum, kept))]
    else:
        per_total, per_kept = [None] * batch_size, [None] * batch_size
    share = seconds / batch_size
    return [{"visual_tokens": t, "kept_tokens": k, "reduction_seconds": share}
            for t, k in zip(per_total, per_kept)]


class ReductionLog:
    """Per-sample records of one evaluation, written once at the end as JSONL."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def gathered(self, gather: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None) -> list[dict[str, Any]]:
        """Records of all ranks (``gather`` concatenates across ranks), without rank padding duplicates."""
        records = gather(self.records) if gather is not None else list(self.records)
        unique: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in records:
            unique.setdefault((record.get("task"), record.get("split"), record.get("doc_id")), record)
        return sorted(unique.values(), key=lambda r: (str(r.get("task")), str(r.get("split")), r.get("doc_id")))

    @staticmethod
    def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        counted = [r for r in records if r.get("kept_tokens") is not None and r.get("visual_tokens")]
        kept = sum(r["kept_tokens"] for r in counted)
        total = sum(r["visual_tokens"] for r in counted)
        return {
            "samples": len(records),
            "visual_tokens": total,
            "kept_tokens": kept,
            "kept_ratio": kept / total if total else None,
            "reduction_seconds": sum(r.get("reduction_seconds", 0.0) for r in records),
        }

    def write(self, path: Path, records: Sequence[dict[str, Any]]) -> Path:
        """Write a header line (settings + summary), then one line per sample."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps({"tokenreduce": {**self.header, "summary": self.summary(records)}}) + "\n")
            for record in records:
                handle.write(json.dumps(record) + "\n")
        return path
