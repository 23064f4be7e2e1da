"""The reduction recorder and the per-sample JSONL log of the lmms-eval plugin (no lmms-eval needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import tokenreduce as tr
from tokenreduce.integrations.lmms_eval_log import ReductionCall, ReductionLog, ReductionRecorder, per_sample


def _tokens(batch: int = 2, grid: tuple[int, int, int] = (2, 3, 4)) -> tr.VisualTokens:
    return tr.VisualTokens(torch.randn(batch, *grid, 8, generator=torch.Generator().manual_seed(0)))


def test_recorder_sees_reductions_and_restores_the_reducer() -> None:
    reducer = tr.build("random", ratio=0.3)
    before = dict(vars(reducer))
    recorder = ReductionRecorder(reducer)
    with recorder.recording():
        expected = reducer(_tokens())
    assert dict(vars(reducer)) == before, "no instance attribute left behind"
    assert len(recorder.calls) == 1
    call = recorder.calls[0]
    assert call.kept == expected.kept_counts().tolist() == [math.ceil(0.3 * 24)] * 2
    assert call.total == [24, 24] and call.seconds >= 0
    reducer(_tokens())
    assert len(recorder.calls) == 1, "nothing is recorded outside the with block"


def test_pipeline_counts_once_at_the_outermost_call() -> None:
    pipe = tr.Pipeline([tr.build("uniform", ratio=0.5), tr.build("random", ratio=0.5)])
    recorder = ReductionRecorder(pipe)
    with recorder.recording():
        combined = pipe(_tokens(batch=1))
    assert len(recorder.calls) == 1
    assert recorder.calls[0].kept == combined.kept_counts().tolist()


def test_steps_driven_one_by_one_form_one_chain_per_grid() -> None:
    pipe = tr.Pipeline([tr.build("uniform", ratio=0.5), tr.build("random", ratio=0.5)])
    first, second = pipe.steps()
    recorder = ReductionRecorder(pipe)
    tokens = _tokens(batch=1)
    with recorder.recording():
        for _ in range(2):  # two videos of one sample, each through both steps
            kept = first(tokens)
            survivors = tr.VisualTokens(tokens.features, valid=kept.keep_mask.view(1, 2, 3, 4))
            second(survivors)
    assert [c.step for c in recorder.calls] == [1, 2, 1, 2]
    [sample] = per_sample(recorder.calls, batch_size=1)
    assert sample["visual_tokens"] == 2 * 24
    assert sample["kept_tokens"] == 2 * recorder.calls[1].kept[0] == 2 * math.ceil(0.5 * 12)


def test_per_sample_attribution_rules() -> None:
    layerwise = [ReductionCall(0, "reduce", [10, 8], [20, 20], 0.2), ReductionCall(0, "step", [5, 4], [10, 8], 0.2)]
    rows = per_sample(layerwise, batch_size=2)
    assert [(r["visual_tokens"], r["kept_tokens"]) for r in rows] == [(20, 5), (20, 4)]
    assert all(math.isclose(r["reduction_seconds"], 0.2) for r in rows)
    unsplittable = per_sample(layerwise, batch_size=2, one_visual_each=False)
    assert all(r["kept_tokens"] is None and r["visual_tokens"] is None for r in unsplittable)
    assert per_sample([], batch_size=3) == [{"visual_tokens": None, "kept_tokens": None,
                                             "reduction_seconds": 0.0}] * 3


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
