"""The README's model snippet runs as written on a checkpoint saved the way users have theirs: a tiny
Qwen2-VL with its tokenizer and its real processor (whose video part needs torchvision, which the
``hf`` extra installs; CI runs this in its torchvision environment)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torchvision", reason="transformers' video processors need torchvision (the hf extra); "
                                          ".ci/run runs this test in its torchvision environment")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_checkpoints import QWEN_SPECIAL, chat_template, qwen2_vl_config, train_tokenizer

import tokenreduce as tr

ROOT = Path(__file__).resolve().parent.parent
SIDE = 56  # frames of 56x56 pixels: 4x4 patches of 14, merged 2x2 -> 4 LLM tokens per frame pair


def model_snippet() -> str:
    section = re.search(r"## Use it on a model\n(.*?)(?=\n## |\Z)", (ROOT / "README.md").read_text(), re.DOTALL)
    if section is None:
        pytest.skip("not running from a source checkout")
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def save_checkpoint(directory: Path) -> None:
    fast = train_tokenizer(QWEN_SPECIAL)
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(qwen2_vl_config(fast, num_layers=3)).eval().save_pretrained(directory)
    pixels = {"min_pixels": SIDE * SIDE, "max_pixels": SIDE * SIDE}
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(**pixels),
        video_processor=transformers.Qwen2VLVideoProcessor(**pixels),
        tokenizer=fast,
        chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>",
                                    "<|vision_start|><|video_pad|><|vision_end|>"))
    processor.save_pretrained(directory)


def test_readme_model_snippet_runs_and_reduces(tmp_path):
    save_checkpoint(tmp_path)
    frames = np.random.default_rng(0).integers(0, 256, (8, SIDE, SIDE, 3), dtype=np.uint8)
    namespace = {"path": str(tmp_path), "video": frames,
                 "prompt": "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n"}
    exec(compile(model_snippet(), "README.md", "exec"), namespace)
    model, inputs, out = namespace["model"], namespace["inputs"], namespace["out"]
    assert inputs["video_grid_thw"].tolist() == [[4, 4, 4]]  # the real video processor ran: 16 LLM tokens
    assert out.shape[1] > inputs["input_ids"].shape[1]
    with torch.no_grad(), tr.apply(model, tr.build("st_simdiff", ratio=0.3)) as session:
        model(**inputs)
        lengths = session.layer_lengths
    length = inputs["input_ids"].shape[1]
    assert lengths == {0: length, 1: length, 2: length - 16 + 5}  # ceil(0.3 * 16) video tokens from layer 2
