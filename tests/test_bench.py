"""``tokenreduce bench`` on tiny sizes, and the measuring pieces it is made of."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokenreduce.bench.end_to_end import PrefillRun, _PeakMemory
from tokenreduce.bench.model import SIZES, build_model, parameter_count, qwen2_vl_config, video_prompt
from tokenreduce.bench.report import end_to_end_table, growth_exponent, target_lines
from tokenreduce.bench.selection import paper_tokens
from tokenreduce.cli import main

TINY = ["--size", "tiny", "--frames", "2,4", "--resolution", "56", "--selection-frames", "2",
        "--selection-grid", "3", "--dim", "16", "--repeats", "1", "--no-progress"]


def test_bench_runs_end_to_end_and_writes_json_and_plot(tmp_path, capsys):
    out_json, out_plot = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", *TINY, "--strategy", "uniform", "--strategy", "st_simdiff", "--ratios", "0.3,0.5",
                 "--json", str(out_json),
                 "--plot", str(out_plot)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Selection overhead" in printed and "End to end" in printed and "prefill x" in printed
    assert "target at r=0.3" in printed and "growth of prefill time" in printed
    result = json.loads(out_json.read_text())
    assert result["machine"]["torch"] == torch.__version__
    selection = result["selection"]["runs"]
    assert [r["strategy"] for r in selection if r["community"] is None] == ["uniform", "st_simdiff"]
    assert {r["community"] for r in selection if r["strategy"] == "st_simdiff"} >= {None, "connected_components"}
    runs = result["end_to_end"]["runs"]
    configs = (("full", 1.0), ("uniform", 0.3), ("uniform", 0.5), ("st_simdiff", 0.3), ("st_simdiff", 0.5))
    assert {(r["frames"], r["strategy"], r["ratio"]) for r in runs} == {(f, s, r) for f in (2, 4) for s, r in configs}
    for run in runs:
        # the reduction really reached the model: its KV cache holds exactly the budgeted tokens
        assert run["kept_tokens"] == math.ceil(run["ratio"] * run["visual_tokens"])
        assert run["ttft_s"] >= run["prefill_s"] > 0 and run["peak_bytes"] > 0
    assert out_plot.read_bytes().startswith(b"\x89PNG")


def test_bench_parts_can_run_alone(tmp_path, capsys):
    assert main(["bench", *TINY, "--part", "selection", "--strategy", "random", "--plot", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    assert "Selection overhead" in printed and "End to end" not in printed
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--frames", "3"], "frame counts must be even"),
    (["--frames", "4,x"], "expected an integer >= 1"),
    (["--resolution", "50"], "multiple of 28"),
    (["--ratios", "0.3,2"], "the ratio must be in (0, 1]"),
    (["--size", "huge"], "invalid choice: 'huge'"),
    (["--part", "speed"], "invalid choice: 'speed'"),
])
def test_invalid_bench_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert main(["bench", *TINY, "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


class Allocates(torch.nn.Module):
    """Allocates 4 MiB, then 2 MiB, frees the 4 MiB, allocates 1 MiB: the peak is 6 MiB."""

    def forward(self, x):
        a = torch.ones(1 << 20)
        b = torch.ones(1 << 19)
        del a
        c = torch.ones(1 << 18)
        return x + b[0] + c[0]


def test_peak_memory_counts_what_the_forward_allocates():
    module = Allocates()
    memory = _PeakMemory(module, torch.device("cpu"))
    try:
        x = torch.zeros(4)
        peak = memory.measure(lambda: module(x))
    finally:
        memory.close()
    assert 6 * 2**20 <= peak < 6 * 2**20 + 2**16
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_model_sizes_and_prompt_layout():
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):  # shapes only: no memory, no random init
        base = Qwen2VLForConditionalGeneration(qwen2_vl_config("base"))
    assert 100e6 <= parameter_count(base) <= 150e6
    assert set(SIZES) == {"tiny", "small", "base"}
    prompt = video_prompt(8, 112)
    assert prompt.grid == (4, 4, 4) and prompt.visual_tokens == 64
    assert int((prompt.inputs["input_ids"] == 5).sum()) == 64
    with pytest.raises(ValueError, match="multiple of 2"):
        video_prompt(3, 112)
    with pytest.raises(ValueError, match="multiple of 28"):
        video_prompt(4, 100)
    with pytest.raises(ValueError, match="size must be one of"):
        build_model("huge")


def test_paper_tokens_have_temporal_structure():
    tokens = paper_tokens(4, 3, 3, 64, "cpu")
    f = tokens.features[0]
    temporal = torch.nn.functional.cosine_similarity(f[1:], f[:-1], dim=-1).mean()
    across = torch.nn.functional.cosine_similarity(f[:, :, 1:], f[:, :, :-1], dim=-1).mean()
    assert temporal > 0.9 and across.abs() < 0.3
    assert tokens.importance.shape == (1, 4, 3, 3) and tokens.signals["keys"].shape == (1, 4, 3, 3, 64)


def run(frames, strategy, ratio, prefill, peak):
    return PrefillRun(frames=frames, strategy=strategy, ratio=ratio, visual_tokens=100, kept_tokens=100,
                      ttft_s=prefill + 1, vision_s=1, prefill_s=prefill, peak_bytes=peak)


def test_targets_and_growth_are_checked_against_full():
    runs = [run(8, "full", 1.0, 1.0, 1000), run(16, "full", 1.0, 4.0, 2000),
            run(8, "s", 0.3, 0.3, 300), run(16, "s", 0.3, 1.2, 1200)]
    lines = target_lines(runs)
    assert lines[0] == ("target at r=0.3, 16 frames, s: prefill 0.30x full (meets <= 0.4x), "
                        "peak memory 0.60x (misses <= 0.5x)")
    assert "full: exponent 2.00" in lines[1] and "s r=0.3: exponent 2.00" in lines[2]
    assert growth_exponent(runs[:1]) is None
    table = end_to_end_table(runs)
    assert "0.30" in table and "0.60" in table
