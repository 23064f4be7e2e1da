"""``tokenreduce bench`` on tiny sizes, and the measuring and reporting pieces it is made of.

No test asserts a timing: they check what is recorded, written and concluded from given numbers.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

import tokenreduce as tr
from tokenreduce.bench.end_to_end import PrefillRun, _PeakMemory
from tokenreduce.bench.model import SIZES, build_model, parameter_count, qwen2_vl_config, video_prompt
from tokenreduce.bench.report import (
    end_to_end_table,
    end_to_end_warnings,
    growth_exponent,
    line_style,
    target_lines,
)
from tokenreduce.bench.selection import paper_tokens
from tokenreduce.bench.spread import Spread, verdict
from tokenreduce.cli import main

end_to_end_module = importlib.import_module("tokenreduce.bench.end_to_end")  # the package exports a function
TINY = ["--size", "tiny", "--frames", "2,4", "--resolution", "56", "--selection-frames", "2",
        "--selection-grid", "3", "--dim", "16", "--repeats", "1", "--no-progress"]


def test_bench_runs_any_config_and_records_what_produced_the_numbers(tmp_path, capsys):
    out_json, out_plot = tmp_path / "bench.json", tmp_path / "bench.png"
    config_file = tmp_path / "reference.json"
    config_file.write_text(json.dumps({"name": "st_simdiff", "variant": "reference"}))
    code = main(["bench", *TINY, "--repeats", "3", "--strategy", "uniform", "--strategy", "uniform:per_frame=false",
                 "--strategy", str(config_file), "--strategy", '{"name": "st_simdiff", "tau_sim": 0.7}',
                 "--ratios", "0.3", "--check-logits", "--json", str(out_json), "--plot", str(out_plot)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Selection overhead" in printed and "End to end" in printed and "min / median / max" in printed
    assert "target at r=0.3" in printed and "growth of prefill CPU time" in printed
    result = json.loads(out_json.read_text())
    assert result["complete"] is True
    versions = result["machine"]
    assert versions["torch"] == torch.__version__ and versions["tokenreduce"] == tr.__version__
    import transformers

    assert versions["transformers"] == transformers.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(tr.__file__).parent, capture_output=True, text=True)
    if head.returncode == 0:
        assert versions["git"]["commit"] == head.stdout.strip()
    selection = result["selection"]["runs"]
    assert all(r["cpu_seconds"]["min"] <= r["cpu_seconds"]["median"] <= r["cpu_seconds"]["max"] for r in selection)
    assert all(len(r["seconds"]["values"]) == 3 for r in selection)
    labels = [r["strategy"] for r in selection if r["community"] is None]
    assert labels == ["uniform", "uniform(per_frame=False)", "reference (st_simdiff)", "st_simdiff(tau_sim=0.7)"]
    reference = next(r for r in selection if r["strategy"] == "reference (st_simdiff)")
    assert reference["config"]["variant"] == "reference" and reference["config"]["ratio"] == 0.3
    runs = result["end_to_end"]["runs"]
    assert {(r["frames"], r["strategy"]) for r in runs} == {
        (f, s) for f in (2, 4) for s in ("full", *labels)}
    for run in runs:
        assert run["repeats"] == 3 and len(run["prefill_cpu_s"]["values"]) == 3
        assert run["peak_bytes"] > 0 and (run["config"] is None) == (run["strategy"] == "full")
        if run["strategy"].startswith("uniform"):  # the reduction reached the model: its KV cache holds the budget
            assert run["kept_tokens"] == math.ceil(0.3 * run["visual_tokens"])
    # two configurations of uniform compute the same thing: their logits agree exactly
    assert any("uniform r=0.3: 2 configurations" in note and "at most 0 " in note
               for note in result["end_to_end"]["notes"])
    assert out_plot.read_bytes().startswith(b"\x89PNG")


def test_an_interrupted_run_keeps_what_finished(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second frame count: the JSON holds what finished, marked incomplete, and
    the plot the first frame count."""
    out_json, out_plot = tmp_path / "bench.json", tmp_path / "bench.png"
    real = end_to_end_module._timed_prefill
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # 2 configs x 1 repeat at 2 frames, then the first timing at 4 frames
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(end_to_end_module, "_timed_prefill", interrupted)
    code = main(["bench", *TINY, "--part", "end-to-end", "--strategy", "uniform", "--ratios", "0.3",
                 "--json", str(out_json), "--plot", str(out_plot)])
    assert code == 130
    assert "interrupted" in capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["complete"] is False
    runs = result["end_to_end"]["runs"]
    timed = {(r["frames"], r["strategy"]) for r in runs if r["prefill_cpu_s"] is not None}
    assert timed == {(2, "full"), (2, "uniform")}
    # at 4 frames the warm-up passes finished (memory, kept count), the timing did not
    assert {(r["frames"], r["strategy"], r["repeats"]) for r in runs if (r["frames"], r["strategy"]) not in timed} == {
        (4, "full", 0), (4, "uniform", 0)}
    assert all(r["peak_bytes"] > 0 for r in runs)
    assert out_plot.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("given, chunk", [([], 256), (["--prefill-chunk", "64"], 64),
                                          (["--prefill-chunk", "None"], None)])
def test_the_prefill_chunk_reaches_every_reduced_run_and_the_record(given, chunk, tmp_path, monkeypatch, capsys):
    real_apply, asked = tr.apply, []

    def recording_apply(model, reducer, **options):
        asked.append(options.get("prefill_chunk", "not given"))
        return real_apply(model, reducer, **options)

    monkeypatch.setattr(tr, "apply", recording_apply)
    out_json = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--part", "end-to-end", "--frames", "2", "--strategy", "fastv", *given,
                 "--json", str(out_json), "--plot", ""]) == 0
    assert asked[1:] == [chunk, chunk]  # after the install check: the warm-up and the timed run
    assert json.loads(out_json.read_text())["options"]["prefill_chunk"] == chunk
    shown = "unchunked" if chunk is None else f"chunks of {chunk}"
    assert f"reduced prefill {shown}" in capsys.readouterr().out


def test_bench_parts_can_run_alone(tmp_path, capsys):
    assert main(["bench", *TINY, "--part", "selection", "--strategy", "random", "--plot", str(tmp_path / "p.png"),
                 "--json", ""]) == 0
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
    (["--threads", "0"], "expected an integer >= 1"),
    (["--prefill-chunk", "0"], "expected an integer >= 1 or 'none', got '0'"),
    (["--prefill-chunk", "off"], "expected an integer >= 1 or 'none', got 'off'"),
    (["--strategy", '{"variant": "reference"}'], 'needs a "name"'),
    (["--strategy", "{nope"], "not a valid JSON object"),
    (["--strategy", "st_simdiff:variant"], "is not key=value"),
])
def test_invalid_bench_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_strategy_option_is_a_clear_error(capsys):
    assert main(["bench", *TINY, "--part", "selection", "--json", "", "--strategy", "st_simdiff:colour=red"]) == 2
    assert "colour" in capsys.readouterr().err


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


def test_peak_memory_counts_what_the_forward_allocates_and_prints_nothing(capfd):
    module = Allocates()
    memory = _PeakMemory(module, torch.device("cpu"))
    try:
        x = torch.zeros(4)
        peak, out = memory.measure(lambda: module(x))
    finally:
        memory.close()
    assert 6 * 2**20 <= peak < 6 * 2**20 + 2**16 and out.shape == (4,)
    assert not module._forward_hooks and not module._forward_pre_hooks
    captured = capfd.readouterr()
    assert "USDT" not in captured.err + captured.out and "profiler" not in captured.err


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


def run(frames, strategy, ratio, prefill, peak, cpu=None):
    """A run whose repeats are the given prefill (wall) and CPU times."""
    prefill = prefill if isinstance(prefill, (list, tuple)) else [prefill] * 3
    cpu = [2 * p for p in prefill] if cpu is None else (cpu if isinstance(cpu, (list, tuple)) else [cpu] * 3)
    return PrefillRun(frames=frames, strategy=strategy, ratio=ratio, config=None, visual_tokens=100, kept_tokens=100,
                      ttft_s=Spread.of([p + 1 for p in prefill]), vision_s=Spread.of([1] * len(prefill)),
                      prefill_s=Spread.of(prefill), ttft_cpu_s=Spread.of([c + 2 for c in cpu]),
                      prefill_cpu_s=Spread.of(cpu), peak_bytes=peak)


def test_targets_and_growth_are_checked_against_full():
    runs = [run(8, "full", 1.0, 1.0, 1000), run(16, "full", 1.0, 4.0, 2000),
            run(8, "s", 0.3, 0.3, 300), run(16, "s", 0.3, 1.2, 1200, cpu=2.4)]
    lines = target_lines(runs)
    assert lines[0] == ("target at r=0.3, 16 frames, s: prefill 0.30x full wall-clock / 0.30x CPU time "
                        "(CPU 0.30-0.30x over the repeats: meets <= 0.4x), peak memory 0.60x (misses <= 0.5x)")
    assert "(CPU 0.45-0.45x over the repeats: misses <= 0.4x)" in target_lines(
        runs[:3] + [run(16, "s", 0.3, 1.2, 1200, cpu=3.6)])[0]
    assert "full: exponent 2.00" in lines[1] and "s r=0.3: exponent 2.00" in lines[2]
    assert growth_exponent(runs[:1]) is None
    table = end_to_end_table(runs)
    assert "0.30" in table and "0.60" in table
    assert end_to_end_warnings(runs) == []


def test_noisy_or_too_few_repeats_give_no_verdict():
    full = run(16, "full", 1.0, 4.0, 2000)
    noisy = run(16, "s", 0.3, 1.2, 1000, cpu=[1.0, 3.9, 8.0])  # 0.12x-1.0x of full: noise, not a result
    line = target_lines([full, noisy])[0]
    assert "no verdict" in line and "meets <= 0.4x" not in line and "misses <= 0.4x" not in line
    warning = end_to_end_warnings([full, noisy])
    assert len(warning) == 1 and "s r=0.3 at 16 frames" in warning[0] and "vary by more than 25%" in warning[0]
    assert "~" in end_to_end_table([full, noisy])
    straddles = run(16, "s", 0.3, 1.2, 1000, cpu=[2.9, 3.2, 3.4])  # 0.36x-0.42x: both sides of 0.4x
    assert "no verdict: the repeats straddle 0.4x" in target_lines([full, straddles])[0]
    one = [run(16, "full", 1.0, [4.0], 2000, cpu=[8.0]), run(16, "s", 0.3, [1.2], 1000, cpu=[2.4])]
    assert "unverified: 1 repeat(s)" in target_lines(one)[0]


def test_spread_ratio_and_verdict():
    a, b = Spread.of([1.0, 2.0, 4.0]), Spread.of([2.0, 4.0])
    assert (a.min, a.median, a.max) == (1.0, 2.0, 4.0) and a.relative == 1.5 and a.wide
    assert a.ratio(b).min == 0.25 and a.ratio(b).max == 2.0
    assert verdict(Spread.of([0.3]), 0.4) == "meets <= 0.4x" and verdict(Spread.of([0.5]), 0.4) == "misses <= 0.4x"
    assert a.as_dict() == {"min": 1.0, "median": 2.0, "max": 4.0, "values": [1.0, 2.0, 4.0]}


def test_plot_lines_are_told_apart_beyond_ten_colours():
    styles = [tuple(sorted(line_style(i, f"s{i}").items())) for i in range(24)]
    assert len(set(styles)) == 24
    assert line_style(0, "full")["color"] == "black"
