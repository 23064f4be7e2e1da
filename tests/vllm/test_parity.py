"""Cross-engine parity: vLLM serving with a tokenreduce strategy keeps the same tokens as ``tr.apply``.

For each case (model, strategy, pruning rate, count formula) one vLLM engine serves two videos of
different grids in one batch; the plugin records what it kept. The same checkpoint, videos and strategy
then run in transformers under ``tr.apply`` with the reducer the plugin built for that count. Checked per
video: the count is vLLM's formula for the grid, the kept flat indices are identical, and the first
generated token's log-probabilities agree — the kept set and its positions reach the language model —
while they differ clearly from the unreduced model's.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass

import pytest
import torch
from serving_checkpoints import moving_square_video, video_metadata, video_prompt

import tokenreduce as tr
from tokenreduce.integrations.serving import ServingStrategy
from tokenreduce.integrations.vllm_serving import ENV_RECORD, ENV_STRATEGY

#: By the dtype both engines run in: how far apart their first-token log-probabilities may be, and how
#: much farther the unreduced model's must be (so that the comparison tells a reduced run from a full one).
#: bfloat16 on the tiny Qwen3.5: engines within 0.004, the unreduced model 0.037 away or more.
LOGPROBS = {"float32": (2e-3, 1e-2), "bfloat16": (1e-2, 2e-2)}


@dataclass(frozen=True)
class Case:
    model: str
    strategy: dict
    rate: float
    method: str = "evs"
    dtype: str = "float32"  # Qwen3.5 runs in bfloat16: vLLM's CPU Gated-DeltaNet kernel takes nothing else

    @property
    def spec(self) -> str:
        """The strategy as ``TOKENREDUCE_VLLM_STRATEGY`` holds it."""
        return json.dumps(self.strategy)

    def __str__(self) -> str:
        return f"{self.model}-{self.strategy['name']}-q{self.rate}-{self.method}"


CASES = [
    Case("qwen2_5_vl", {"name": "uniform"}, 0.5),
    Case("qwen2_5_vl", {"name": "evs"}, 0.75),
    Case("qwen2_5_vl", {"name": "st_simdiff_select"}, 0.75),
    Case("qwen3_vl", {"name": "vidcom2"}, 0.9, "vidcom2"),
    Case("qwen3_vl", {"name": "st_simdiff_select", "tau_sim": 0.9}, 0.5),
    Case("qwen3_5", {"name": "evs"}, 0.75, dtype="bfloat16"),
    Case("qwen3_5", {"name": "st_simdiff_select", "tau_sim": 0.9}, 0.75, "vidcom2", dtype="bfloat16"),
]


def videos_of(frame_size: tuple[int, int]) -> list:
    """Two videos with different token grids (frame size as given, and square); background noise keeps
    every similarity decision well away from a tie."""
    height, width = frame_size
    return [moving_square_video((height, width), seed=0, noise=12.0),
            moving_square_video((height, height), seed=1, noise=12.0)]


def expected_count(case: Case, grid: tuple[int, int, int]) -> int:
    """The kept count vLLM reserves for a (T, H, W) token grid: its EVS or VidCom2 formula."""
    t, h, w = grid
    n = t * h * w
    kept = int(n * (1 - case.rate))
    return max(h * w, kept) if case.method == "evs" else max(t, min(kept, n))


@dataclass
class Served:
    case: Case
    videos: list
    records: list[dict]
    logprobs: list[dict[int, float]]  # per video: the first generated token's top-5 log-probabilities


@pytest.fixture(scope="module", params=CASES, ids=str)
def served(request, tiny_models, tmp_path_factory):
    """One vLLM engine for the case, serving both videos in one batch; shut down after the case's tests."""
    from vllm import LLM, SamplingParams

    case = request.param
    model = tiny_models[case.model]
    videos = videos_of(model.frame_size)
    record = tmp_path_factory.mktemp("record") / "kept.jsonl"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV_STRATEGY, case.spec)
        env.setenv(ENV_RECORD, str(record))
        llm = LLM(model=str(model.path), dtype=case.dtype, enforce_eager=True, max_model_len=2048, max_num_seqs=2,
                  distributed_executor_backend="uni", limit_mm_per_prompt={"image": 0, "video": 1},
                  video_pruning_rate=case.rate, video_pruning_method=case.method, seed=0)
    requests = [{"prompt": video_prompt(), "multi_modal_data": {"video": [(video, video_metadata())]}}
                for video in videos]
    outputs = llm.generate(requests, SamplingParams(max_tokens=1, temperature=0.0, logprobs=5))
    logprobs = [{token: lp.logprob for token, lp in out.outputs[0].logprobs[0].items()} for out in outputs]
    records = [json.loads(line) for line in record.read_text().splitlines()]
    yield Served(case, videos, records, logprobs)
    del llm
    gc.collect()


_TRANSFORMERS: dict[str, tuple] = {}


def transformers_model(path, dtype: str):
    """The checkpoint in transformers, in the dtype vLLM serves it in, and its processor; loaded once per session."""
    if (str(path), dtype) not in _TRANSFORMERS:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        _TRANSFORMERS[str(path), dtype] = (model, AutoProcessor.from_pretrained(path))
    return _TRANSFORMERS[str(path), dtype]


@dataclass
class Reference:
    grid: tuple[int, int, int]
    kept: list[int]
    features: torch.Tensor  # the video's LLM input embeddings [N, D], grid order
    reduced: torch.Tensor  # log-probabilities of the next token under the reduction
    full: torch.Tensor  # ... without it


@pytest.fixture(scope="module")
def reference(served, tiny_models) -> list[Reference]:
    """Per video: what ``tr.apply`` keeps in transformers with the reducer the plugin built for its count."""
    model, processor = transformers_model(tiny_models[served.case.model].path, served.case.dtype)
    strategy = ServingStrategy.from_spec(served.case.spec)
    metadata = {k: v for k, v in video_metadata().items() if k != "do_sample_frames"}
    out = []
    for video in served.videos:
        inputs = processor(text=[video_prompt()], videos=[video], video_metadata=[metadata], do_sample_frames=False,
                           return_tensors="pt")
        with torch.no_grad():
            full = torch.log_softmax(model(**inputs).logits[0, -1].float(), dim=-1)
            pooled = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                    video_grid_thw=inputs["video_grid_thw"]).pooler_output
        features = pooled[0] if isinstance(pooled, (list, tuple)) else pooled
        grid = tuple(int(v) for v in inputs["video_grid_thw"][0])
        merge = model.config.vision_config.spatial_merge_size
        grid = (grid[0], grid[1] // merge, grid[2] // merge)
        reducer = strategy.reducer_for(expected_count(served.case, grid))
        with tr.apply(model, reducer) as session, torch.no_grad():
            reduced = torch.log_softmax(model(**inputs).logits[0, -1].float(), dim=-1)
            assert session.video_grids() == [(0, grid)]
            kept = session.kept_indices()[0].tolist()
        out.append(Reference(grid, kept, features, reduced, full))
    return out


def test_one_record_per_video_with_the_count_vllm_reserved(served, reference):
    assert sorted(tuple(r["grid"]) for r in served.records) == sorted(ref.grid for ref in reference)
    for record in served.records:
        count = expected_count(served.case, tuple(record["grid"]))
        assert record["count"] == count
        assert len(record["kept"]) == count


def test_kept_set_equals_transformers(served, reference):
    by_grid = {tuple(r["grid"]): r for r in served.records}
    for ref in reference:
        assert by_grid[ref.grid]["kept"] == ref.kept
        if served.case.strategy == {"name": "evs"}:  # on Qwen2.5-VL it is vLLM's own EVS, as documented
            from vllm.multimodal.video_prune.evs import compute_retention_mask

            t, h, w = ref.grid
            own = compute_retention_mask(ref.features, (t, 2 * h, 2 * w), 2, served.case.rate)
            assert own.nonzero().flatten().tolist() == ref.kept


def test_first_token_logprobs_equal_transformers(served, reference):
    tolerance, separation = LOGPROBS[served.case.dtype]
    for logprobs, ref in zip(served.logprobs, reference):
        tokens = torch.tensor(list(logprobs))
        served_values = torch.tensor(list(logprobs.values()))
        assert torch.allclose(served_values, ref.reduced[tokens], atol=tolerance), (logprobs, ref.reduced[tokens])
        # the comparison can tell: the unreduced model is clearly elsewhere
        assert (ref.full[tokens] - ref.reduced[tokens]).abs().max() > separation
