"""``model(**inputs, labels=labels)`` under a reducer: the model's loss over the reduced sequence, each
kept position with its own label, checked against the loss computed by hand from the reduced run's
logits and the labels of the positions it kept."""

from __future__ import annotations

import math

import pytest
import tiny_vlms as tm
import torch
import torch.nn.functional as F

import tokenreduce as tr

pytest.importorskip("transformers")

IGNORE = -100


def labelled(inputs, seed=0):
    """Random labels at every real position (padding ignored), so dropped positions would show."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 100, inputs["input_ids"].shape, generator=generator)
    return labels.masked_fill(inputs["attention_mask"] == 0, IGNORE)


def oracle_loss(logits, inputs, labels, session, grid_tokens):
    """Mean next-token cross-entropy over the reduced sequence built by hand: per sample, its real
    positions minus the dropped video tokens, with the video's new tokens (label ignored) right after
    its last grid position, left-padded to the logits' length."""
    total, count = torch.zeros(()), 0
    videos = dict(zip([row for row, _ in session.video_grids()], zip(session.kept_indices(),
                                                                       session.inserted_counts())))
    for b in range(logits.shape[0]):
        ids, real = inputs["input_ids"][b], inputs["attention_mask"][b].bool()
        grid = (ids == tm.VIDEO).nonzero().flatten()[:grid_tokens]
        kept, inserted = videos[b]
        dropped = torch.ones(grid_tokens, dtype=torch.bool)
        dropped[kept] = False
        slots = []
        gone = set(grid[dropped].tolist())
        for position in real.nonzero().flatten().tolist():
            if position not in gone:
                slots.append(int(labels[b, position]))
            if position == int(grid[-1]):  # new tokens follow the video's last grid position, kept or not
                slots += [IGNORE] * inserted
        row = torch.tensor([IGNORE] * (logits.shape[1] - len(slots)) + slots)
        targets = row[1:]
        keep = targets != IGNORE
        total = total + F.cross_entropy(logits[b, :-1][keep].float(), targets[keep], reduction="sum")
        count += int(keep.sum())
    return total / count


CASES = {
    "pre_llm": (tm.qwen2_vl, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 6)]), 12, tr.build("random", ratio=0.3)),
    "in_llm": (tm.qwen2_vl, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 6)]), 12,
               tr.build("attention_prune", ratio=0.4, layer=1)),
    "new_tokens": (tm.llava_onevision, lambda: tm.llava_inputs([3, 3], 2, 1), 12,
                   tr.build("visionzip", dominant=2, contextual=1, cls_token=False)),
    "layerwise": (tm.qwen2_vl, lambda: tm.qwen_inputs([(2, 4, 6), (2, 4, 6)]), 12,
                  tr.build("framefusion", ratio=0.5, similarity_lower_bound=-1.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_over_the_kept_sequence_equals_the_oracle(case):
    build, make_inputs, grid_tokens, reducer = CASES[case]
    model, inputs = build(), make_inputs()
    labels = labelled(inputs)
    with torch.no_grad(), tr.apply(model, reducer) as session:
        out = model(**inputs, labels=labels)
        reduced = model(**inputs)
        assert all(k.numel() < grid_tokens for k in session.kept_indices())  # something was dropped
        expected = oracle_loss(reduced.logits, inputs, labels, session, grid_tokens)
    assert torch.equal(out.logits, reduced.logits)
    assert out.loss is not None and math.isfinite(float(out.loss))
    torch.testing.assert_close(out.loss.float(), expected, rtol=1e-5, atol=1e-6)
    assert list(out.keys())[:2] == ["loss", "logits"]  # the output keeps its field order


def test_keep_all_gives_the_models_own_loss_and_the_model_is_restored():
    model, inputs = tm.qwen2_vl(), tm.qwen_inputs([(2, 4, 6), (2, 4, 4)])
    labels = labelled(inputs, seed=3)
    with torch.no_grad():
        plain = model(**inputs, labels=labels).loss
        with tr.apply(model, tr.build("keep_all")):
            kept = model(**inputs, labels=labels).loss
        after = model(**inputs, labels=labels).loss
    assert torch.equal(kept, plain) and torch.equal(after, plain)


def test_logits_to_keep_takes_the_last_labels():
    model, inputs = tm.qwen2_vl(), tm.qwen_inputs([(2, 4, 6)])
    labels = torch.full_like(inputs["input_ids"], IGNORE)
    labels[0, -1] = 7  # only the last position carries a label: predicted from the one before it
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.3)):
        out = model(**inputs, labels=labels, logits_to_keep=2)
        full = model(**inputs).logits
    assert out.logits.shape[1] == 2
    torch.testing.assert_close(out.loss, F.cross_entropy(full[0, -2][None], torch.tensor([7])))
