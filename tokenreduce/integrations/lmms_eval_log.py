"""Per-sample kept-token counts and reduction time during an evaluation, written as JSONL.

``ReductionRecorder`` times a reducer while a model generates: it wraps the reducer's (and its
steps') ``reduce``/``step`` methods on the instances for the duration of a ``with`` block, so it sees
every call an adapter makes without knowing the adapter, and restores the methods on exit. Nested
calls (a pipeline running its steps) count once, at the outermost call.

``per_sample`` turns what the adapter session records (each video's batch row, the tokens it offered
and the tokens the prefill kept of it) into one record per sample; ``ReductionLog`` collects those records
and writes them, gathered from every data-parallel rank, to one JSONL file next to the lmms-eval
results.
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

from tokenreduce.adapters.record import VideoRecord


@dataclasses.dataclass(frozen=True)
class ReductionCall:
    """One outermost reducer call (``reduce``, or ``step`` of a layer-wise reducer) and its wall time."""

    method: str
    seconds: float


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class ReductionRecorder:
    """Time the calls ``reducer`` (and its steps) receive inside ``with recorder.recording():``."""

    def __init__(self, reducer: Any) -> None:
        self.reducer = reducer
        self.calls: list[ReductionCall] = []
        self._depth = 0

    @property
    def seconds(self) -> float:
        """Wall time of the recorded calls."""
        return sum(call.seconds for call in self.calls)

    def _targets(self) -> list[Any]:
        seen: dict[int, Any] = {}
        for target in (self.reducer, *self.reducer.steps()):
            seen.setdefault(id(target), target)
        return list(seen.values())

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
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
            if outermost:
                _synchronize()
                self.calls.append(ReductionCall(method=name, seconds=time.perf_counter() - start))
            return result

        return recorded

    @contextlib.contextmanager
    def recording(self) -> Iterator[ReductionRecorder]:
        """Start with no calls; watch ``reduce``/``step`` of the reducer and its steps until exit."""
        self.calls = []
        patched: list[tuple[Any, str]] = []
        try:
            for target in self._targets():
                for name in ("reduce", "step"):
                    method = getattr(target, name, None)
                    if callable(method) and name not in vars(target):
                        setattr(target, name, self._wrap(name, method))
                        patched.append((target, name))
            yield self
        finally:
            for target, name in patched:
                delattr(target, name)


def per_sample(videos: Sequence[VideoRecord], seconds: float, batch_size: int,
               rows_per_sample: int = 1) -> list[dict[str, Any]]:
    """Visual tokens offered and handed on, and reduction seconds, for each of ``batch_size`` samples.

    ``videos`` is the adapter session's record of one ``generate`` call (``session.videos()``): per
    reduced grid (a video or an image), its batch row, the grid tokens the sequence offered (fewer
    than the grid where the model's own processor already dropped some, as VideoLLaMA3's does), the
    indices the prefill kept and the new tokens it inserted. A sample's ``visual_tokens`` is the
    tokens its videos and images offered, its ``kept_tokens`` the tokens the language model receives
    in their place (kept plus inserted), ``inserted_tokens`` the new ones among them. Each video
    counts for the sample of its row, so the counts are exact however the adapter grouped the
    grids. With ``rows_per_sample`` rows per sample (``generate`` repeats each sample ``num_beams``
    times), row ``r`` is sample ``r // rows_per_sample`` and only its first copy counts. A sample
    without a reduced grid has ``None`` counts. The reduction time of the call is split evenly over
    the samples.
    """
    counts: list[list[int] | None] = [None] * batch_size  # per sample: visual, kept, inserted
    for video in videos:
        sample, copy = divmod(video.sample, rows_per_sample)
        if not 0 <= sample < batch_size:
            raise ValueError(f"a video of batch row {video.sample} lies outside {batch_size} samples "
                             f"x {rows_per_sample} rows")
        if copy:
            continue
        total = counts[sample] or [0, 0, 0]
        counts[sample] = [total[0] + video.tokens, total[1] + int(video.kept.numel()) + video.inserted,
                          total[2] + video.inserted]
    share = seconds / batch_size
    names = ("visual_tokens", "kept_tokens", "inserted_tokens")
    return [{**dict(zip(names, c if c is not None else [None] * 3)), "reduction_seconds": share} for c in counts]


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
