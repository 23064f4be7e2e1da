"""``tokenreduce demo`` and ``tokenreduce visualize`` end to end, and their error handling."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from video_factory import write_video

from tokenreduce.cli import main

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", num_frames=12, width=64, height=48)


def test_demo_on_a_video_prints_the_table_and_writes_png_and_html(clip, tmp_path, capsys):
    out = tmp_path / "demo.png"
    code = main(["demo", "--video", str(clip), "--frames", "3", "--patches", "4", "--ratio", "0.5",
                 "--out", str(out), "--html"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "strategy" in printed and "representatives" in printed and "events" in printed
    assert "uniform" in printed and "importance=patch contrast" in printed
    kept = math.ceil(0.5 * 3 * 3 * 4)  # 3 frames of a 3x4 grid (64x48 at 4 patches per row)
    uniform_row = next(line for line in printed.splitlines() if line.startswith("uniform"))
    assert uniform_row.split()[1] == str(kept)
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert "data:image/png;base64," in out.with_suffix(".html").read_text()


def test_demo_runs_on_the_bundled_clip(tmp_path, capsys):
    out = tmp_path / "bunny.png"
    assert main(["demo", "--frames", "2", "--strategy", "uniform", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bigbuckbunny.mp4 (132 frames, 2 sampled)" in printed
    assert "2 frames x 9x16 = 288" in printed
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_visualize_takes_names_and_config_files(clip, tmp_path, capsys):
    config = tmp_path / "every-frame.yaml"
    config.write_text("name: uniform\nper_frame: true\n")
    out = tmp_path / "vis.png"
    code = main(["visualize", str(clip), "--strategy", "random", "--strategy", str(config), "--ratio", "0.25",
                 "--frames", "2", "--patches", "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "every-frame (uniform)" in printed and "random" in printed
    assert out.read_bytes().startswith(PNG_MAGIC) and not out.with_suffix(".html").exists()


def test_a_config_files_budget_stands_unless_the_ratio_flag_is_given(clip, tmp_path, capsys):
    config = tmp_path / "half.yaml"
    config.write_text("name: uniform\nratio: 0.5\n")
    grid_tokens = 2 * 3 * 4  # 2 frames of a 3x4 grid
    for flags, kept in (([], grid_tokens // 2), (["--ratio", "0.25"], math.ceil(0.25 * grid_tokens))):
        assert main(["visualize", str(clip), "--strategy", str(config), *flags, "--frames", "2", "--patches", "4",
                     "--out", str(tmp_path / "vis.png")]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("half (uniform)"))
        assert row.split()[2] == str(kept), row  # "half", "(uniform)", kept, ...


def test_visualize_with_a_checkpoint_runs_each_strategy_in_the_whole_model(clip, tmp_path, capsys):
    from transformers import Qwen2VLImageProcessorPil

    from tokenreduce.bench.model import build_model

    checkpoint = tmp_path / "ckpt"
    build_model("tiny").save_pretrained(checkpoint)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(checkpoint)
    out = tmp_path / "model.png"
    assert main(["visualize", str(clip), "--model", str(checkpoint), "--strategy", "uniform", "--strategy", "fastv",
                 "--frames", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tokens: 2 frames x 2x2 = 8; encoder: ckpt, the whole model" in printed  # 4 frames: 2 temporal patches
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith(("uniform", "fastv"))}
    assert rows["uniform"][1] == "3" and rows["fastv"][1] == "2"  # ceil(0.3 * 8); FastV's round(0.3 * 8)
    assert rows["uniform"][-1] == rows["fastv"][-1] == "-"  # the model's own signals: no proxies
    assert "proxy signals" not in printed.split("\n\n", 1)[1]
    assert out.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("argv, message", [
    (["demo", "--ratio", "0"], "the ratio must be in (0, 1]"),
    (["demo", "--ratio", "half"], "expected a number in (0, 1]"),
    (["demo", "--frames", "0"], "expected an integer >= 1"),
    (["demo", "--frames", "many"], "expected an integer >= 1"),
    (["visualize"], "the following arguments are required: VIDEO"),
    (["demo", "--colour", "red"], "unrecognized arguments: --colour red"),
])
def test_invalid_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: tokenreduce" in err and "Traceback" not in err


def test_missing_and_undecodable_videos_give_a_clear_message(tmp_path, capsys):
    assert main(["visualize", str(tmp_path / "nope.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 50)
    assert main(["demo", "--video", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenreduce: error: cannot decode") and "Traceback" not in err


def test_unknown_strategy_names_the_close_match(clip, tmp_path, capsys):
    assert main(["visualize", str(clip), "--strategy", "unifrom", "--out", str(tmp_path / "x.png")]) == 2
    assert "did you mean 'uniform'" in capsys.readouterr().err


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenreduce", *args], check=False, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_python_dash_m_runs_visualize_and_reports_errors_without_traceback(clip, tmp_path):
    done = run_module("visualize", str(clip), "--frames", "2", "--strategy", "uniform", "--html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tokenreduce-visualize.png").exists() and (tmp_path / "tokenreduce-visualize.html").exists()
    failed = run_module("visualize", str(tmp_path / "missing.mp4"), cwd=tmp_path)
    assert failed.returncode == 2
    assert "does not exist" in failed.stderr and "Traceback" not in failed.stderr
