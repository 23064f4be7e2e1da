"""One reduced model used from several threads at once: forwards take turns and every thread's
reduction is its own, so each thread gets what a sequential run gives (docs/models.md)."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import tiny_vlms as tm
import torch

import tokenreduce as tr

pytest.importorskip("transformers")

GRIDS = [(2, 4, 6), (2, 4, 4), (4, 4, 4), (2, 8, 4)]  # different lengths: a mixed-up layout cannot pass


def run_threads(work, jobs: list, repeats: int):
    """``work(job)`` ``repeats`` times per job, every job in its own thread, started together, with a
    thread switch interval of 1 µs (the default 5 ms hides races)."""
    start = threading.Barrier(len(jobs))

    def worker(job):
        start.wait(timeout=60)
        return [work(job) for _ in range(repeats)]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return [run.result(timeout=300) for run in [pool.submit(worker, job) for job in jobs]]
    finally:
        sys.setswitchinterval(interval)


def test_concurrent_prefills_each_get_their_own_reduction():
    model = tm.qwen2_vl()
    inputs = [tm.sample_of(tm.qwen_inputs([grid], seed=i), 0) for i, grid in enumerate(GRIDS)]
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.5, seed=0)) as session:
        alone = []
        for x in inputs:
            logits = model(**x).logits
            alone.append((logits, session.kept_indices()[0]))

        def prefill(i):
            logits = model(**inputs[i]).logits
            return logits, session.kept_indices()[0]  # this thread's last prefill

        results = run_threads(prefill, list(range(len(inputs))) * 2, repeats=3)
    for i, runs in enumerate(results):
        expected_logits, expected_kept = alone[i % len(inputs)]
        for logits, kept in runs:
            torch.testing.assert_close(logits, expected_logits)
            assert torch.equal(kept, expected_kept)


def _videos(family: str) -> list[dict]:
    if family == "qwen2_vl":
        return [tm.sample_of(tm.qwen_inputs([grid], seed=i), 0) for i, grid in enumerate(GRIDS)]
    return [tm.llava_sample_of(tm.llava_inputs([frames], 2, 1, seed=i), 0) for i, frames in enumerate([2, 3, 4, 1])]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_concurrent_generates_decode_from_their_own_prefill(family):
    model = getattr(tm, family)()
    inputs = _videos(family)

    def generate(i):
        return model.generate(**inputs[i], max_new_tokens=4, do_sample=False)

    with torch.no_grad(), tr.apply(model, tr.build("fastv", ratio=0.5, layer=1)):
        alone = [generate(i) for i in range(len(inputs))]
        results = run_threads(generate, list(range(len(inputs))) * 2, repeats=2)
    for i, runs in enumerate(results):
        for tokens in runs:
            assert torch.equal(tokens, alone[i % len(inputs)])


def test_a_plugin_adapter_whose_supports_raises_does_not_break_apply():
    @tr.register_adapter("aaa_exploding")
    class Exploding(tr.adapters.ModelAdapter):
        @classmethod
        def supports(cls, model):
            raise RuntimeError("supports() exploded")

    try:
        model = tm.qwen2_vl()
        with (pytest.warns(tr.PluginWarning, match=r"'aaa_exploding'.*supports\(\).*exploded"),
              tr.apply(model, tr.build("keep_all")) as session):
            assert type(session.adapter).__name__ == "Qwen2VLAdapter"
    finally:
        tr.ADAPTERS.unregister("aaa_exploding")


def test_a_failed_forward_releases_the_model_for_other_threads():
    model = tm.qwen2_vl()
    good = tm.sample_of(tm.qwen_inputs([GRIDS[0]]), 0)
    ids = good["input_ids"].clone()
    ids[0, (ids[0] == tm.VIDEO).nonzero()[:4, 0]] = 5  # fewer video placeholders than the grid has
    bad = dict(good, input_ids=ids)
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.5)):
        with pytest.raises(ValueError):
            model(**bad)
        with ThreadPoolExecutor(max_workers=1) as pool:  # would wait forever if the lock were still held
            logits = pool.submit(lambda: model(**good).logits).result(timeout=120)
    assert logits.shape[0] == 1
