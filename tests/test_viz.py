"""The kept-token picture and the HTML page (tokenreduce.viz)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenreduce.compare import StrategyRun
from tokenreduce.tokens import Reduction, Role
from tokenreduce.viz import (
    CELL_PIXELS,
    DROPPED_BRIGHTNESS,
    EVENT_COLOUR,
    REPRESENTATIVE_COLOUR,
    TINT,
    overlay,
    render,
    shown_rows,
    write_html,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_shown_rows_spread_over_the_video():
    assert shown_rows(5, 8) == [0, 1, 2, 3, 4]
    assert shown_rows(16, 8) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert shown_rows(16, 1) == [0]
    assert shown_rows(3, 2) == [0, 2]


def test_overlay_colours_each_token_by_its_role():
    frames = np.full((1, CELL_PIXELS, 4 * CELL_PIXELS, 3), 0.6)
    roles = np.array([[[Role.KEPT | Role.REPRESENTATIVE, Role.KEPT | Role.EVENT,
                        Role.KEPT | Role.REPRESENTATIVE | Role.EVENT, Role.ABSORBED]]], dtype=np.int32)
    drawn = overlay(frames, roles)
    cell = lambda i: drawn[0, :, i * CELL_PIXELS:(i + 1) * CELL_PIXELS]
    rep = 0.6 * (1 - TINT) + np.array(REPRESENTATIVE_COLOUR) * TINT
    event = 0.6 * (1 - TINT) + np.array(EVENT_COLOUR) * TINT
    np.testing.assert_allclose(cell(0), np.broadcast_to(rep, cell(0).shape))
    np.testing.assert_allclose(cell(1), np.broadcast_to(event, cell(1).shape))
    np.testing.assert_allclose(cell(2), np.broadcast_to(event, cell(2).shape))  # event colour wins
    np.testing.assert_allclose(cell(3), 0.6 * DROPPED_BRIGHTNESS)  # dropped (absorbed is not kept)


def test_plain_kept_tokens_are_untouched():
    frames = np.random.default_rng(0).random((2, CELL_PIXELS, CELL_PIXELS, 3))
    roles = np.full((2, 1, 1), int(Role.KEPT | Role.SAMPLED), dtype=np.int32)
    np.testing.assert_allclose(overlay(frames, roles), frames)


def make_run(label: str, t=4, h=3, w=5, seed=0) -> StrategyRun:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(1, t * h * w, generator=g) < 0.4
    roles = torch.where(torch.rand(1, t * h * w, generator=g) < 0.5, int(Role.REPRESENTATIVE), int(Role.EVENT))
    return StrategyRun(label, Reduction(keep, roles, grid=(t, h, w)), 0.001, ())


def test_render_writes_a_png_with_one_row_per_strategy(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 30, 50, 3), dtype=np.uint8)
    out = render(frames, [make_run("a"), make_run("b", seed=1)], tmp_path / "sub" / "pic.png",
                 timestamps=[0.0, 0.5, 1.0, 1.5], title="test")
    assert out.read_bytes().startswith(PNG_MAGIC)
    from matplotlib.image import imread

    one = imread(render(frames, [make_run("a")], tmp_path / "one.png"))
    two = imread(out)
    assert two.shape[0] > one.shape[0]  # the second strategy adds a row


def test_render_checks_its_inputs(tmp_path):
    frames = np.zeros((3, 30, 50, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="3 frames but the token grid has 4 rows"):
        render(frames, [make_run("a")], tmp_path / "x.png")
    with pytest.raises(ValueError, match="runs is empty"):
        render(frames, [], tmp_path / "x.png")


def test_html_page_embeds_the_picture_and_the_table(tmp_path):
    frames = np.zeros((4, 30, 50, 3), dtype=np.uint8)
    runs = [make_run("alpha")]
    png = render(frames, runs, tmp_path / "p.png")
    page = write_html(png, runs, tmp_path / "p.html", notes=["a <note>"]).read_text()
    assert "data:image/png;base64," in page and "alpha" in page and "representatives" in page
    assert "a &lt;note&gt;" in page
