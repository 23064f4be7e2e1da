"""The reduction recorder and the per-sample JSONL log of the lmms-eval plugin (no lmms-eval needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tokenreduce as tr
from tokenreduce.adapters.record import VideoRecord
from tokenreduce.integrations.lmms_eval_log import ReductionLog, ReductionRecorder, per_sample


def _tokens(batch: int = 2, grid: tuple[int, int, int] = (2, 3, 4)) -> tr.VisualTokens:
    return tr.VisualTokens(torch.randn(batch, *grid, 8, generator=torch.Generator().manual_seed(0)))


def test_recorder_times_reductions_and_restores_the_reducer() -> None:
    reducer = tr.build("random", ratio=0.3)
    before = dict(vars(reducer))
    recorder = ReductionRecorder(reducer)
    with recorder.recording():
        reducer(_tokens())
        reducer(_tokens())
    assert dict(vars(reducer)) == before, "no instance attribute left behind"
    assert [call.method for call in recorder.calls] == ["reduce", "reduce"]
    assert all(call.seconds > 0 for call in recorder.calls)
    assert math.isclose(recorder.seconds, sum(call.seconds for call in recorder.calls))
    reducer(_tokens())
    assert len(recorder.calls) == 2, "nothing is recorded outside the with block"


def test_pipeline_is_timed_once_at_the_outermost_call() -> None:
    pipe = tr.Pipeline([tr.build("uniform", ratio=0.5), tr.build("random", ratio=0.5)])
    recorder = ReductionRecorder(pipe)
    with recorder.recording():
        pipe(_tokens(batch=1))
    assert len(recorder.calls) == 1
    first, second = pipe.steps()
    with recorder.recording():  # an adapter driving the steps one by one: each call is timed
        kept = first(_tokens(batch=1))
        second(tr.VisualTokens(_tokens(batch=1).features, valid=kept.keep_mask.view(1, 2, 3, 4)))
    assert len(recorder.calls) == 2


def _videos(rows: list[int], grids: list[tuple[int, int, int]], kept: list[int], inserted: list[int],
            offered: list[int | None] | None = None) -> list[VideoRecord]:
    """Session records of grids (batch row, grid, kept count, inserted count, tokens offered)."""
    offered = offered or [None] * len(rows)
    return [VideoRecord(row, grid, torch.arange(k), torch.zeros(math.prod(grid), dtype=torch.int32), new, {}, (),
                        0.0, offered=given)
            for row, grid, k, new, given in zip(rows, grids, kept, inserted, offered)]


def test_per_sample_attributes_each_video_to_its_row() -> None:
    # rows 0 and 2 have two videos of different grids each, row 1 none; the adapter lists them by grid
    videos = _videos([0, 2, 2, 0], [(2, 2, 2), (2, 2, 2), (4, 2, 2), (1, 3, 3)], [3, 2, 5, 4], [1, 0, 2, 0])
    rows = per_sample(videos, seconds=0.3, batch_size=3)
    assert [(r["visual_tokens"], r["kept_tokens"], r["inserted_tokens"]) for r in rows] == [
        (8 + 9, 3 + 1 + 4, 1), (None, None, None), (8 + 16, 2 + 5 + 2, 2)]
    assert all(math.isclose(r["reduction_seconds"], 0.1) for r in rows)
    assert per_sample([], 0.0, batch_size=2) == [{
        "visual_tokens": None, "kept_tokens": None, "inserted_tokens": None, "reduction_seconds": 0.0}] * 2


def test_per_sample_counts_the_tokens_a_video_offered_not_its_grid() -> None:
    # VideoLLaMA3's processor drops repeated patches itself: a (4, 2, 2) grid may offer 10 tokens
    videos = _videos([0, 0], [(4, 2, 2), (1, 2, 2)], [3, 2], [0, 0], offered=[10, None])
    assert per_sample(videos, 0.0, batch_size=1)[0]["visual_tokens"] == 10 + 4


def test_per_sample_counts_the_first_of_repeated_rows() -> None:
    # num_beams=2: rows 0, 1 are sample 0 and rows 2, 3 sample 1
    videos = _videos([0, 1, 2, 3], [(1, 2, 2), (1, 2, 2), (1, 2, 3), (1, 2, 3)], [1, 1, 2, 2], [0] * 4)
    rows = per_sample(videos, seconds=0.0, batch_size=2, rows_per_sample=2)
    assert [(r["visual_tokens"], r["kept_tokens"]) for r in rows] == [(4, 1), (6, 2)]


def test_per_sample_rejects_a_row_outside_the_batch() -> None:
    with pytest.raises(ValueError, match="row 2"):
        per_sample(_videos([2], [(1, 1, 1)], [1], [0]), 0.0, batch_size=2)


def test_log_dedupes_rank_padding_and_writes_header(tmp_path: Path) -> None:
    log = ReductionLog({"reducer": {"name": "random"}})
    for doc_id, kept in [(1, 3), (0, 2), (1, 3)]:  # doc 1 twice: lmms-eval pads ranks with duplicates
        log.add({"task": "t", "split": "test", "doc_id": doc_id, "visual_tokens": 10, "kept_tokens": kept,
                 "reduction_seconds": 0.5})
    records = log.gathered(None)
    assert [r["doc_id"] for r in records] == [0, 1]
    path = log.write(tmp_path / "sub" / "x_tokenreduce.jsonl", records)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    summary = lines[0]["tokenreduce"]["summary"]
    assert summary == {"samples": 2, "visual_tokens": 20, "kept_tokens": 5, "kept_ratio": 0.25,
                       "reduction_seconds": 1.0}
    assert lines[1:] == records
