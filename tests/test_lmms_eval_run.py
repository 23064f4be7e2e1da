"""A real lmms-eval run through the ``tokenreduce`` model plugin, on CPU, without network.

Everything is generated in a temporary directory at run time: a tiny random-weight Qwen2-VL and a
LLaVA-OneVision saved with ``save_pretrained`` (tokenizers trained from scratch), a handful of short
MP4 videos written with PyAV, a local JSON dataset and an lmms-eval task YAML loaded through
``--include_path``. lmms-eval finds the model through the ``lmms_eval.models`` entry point declared
in pyproject.toml (exposed to the subprocess through a throw-away ``.dist-info``). The tests check the
wiring (results and per-sample kept-token logs written, counts consistent), not accuracy.

Transformers 5 video processors need torchvision, which has no build for the CPU torch used here;
the saved checkpoints therefore ship a remote-code processor (``trust_remote_code=true``) whose
video part is NumPy: Qwen2-VL's patchification (resize, normalise, frame pairs, 2x2 merge order),
and LLaVA-OneVision's resized frames. The plugin code path is the ordinary ``AutoProcessor`` one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install 'tokenreduce[eval]'")
av = pytest.importorskip("av")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]
TASK = "tokenreduce_tiny_video_qa"
IMAGE_TASK = "tokenreduce_tiny_image_qa"
NUM_IMAGES = 2
NUM_VIDEOS = 4
FRAMES_PER_VIDEO = 12
MAX_FRAMES = 8
FRAME_SIDE = 56  # the fixture processor resizes frames to 56x56: 4x4 patches of 14, merged 2x2
VIDEO_TOKENS = (MAX_FRAMES // 2) * (FRAME_SIDE // 14) ** 2 // 4  # per video: 4 frame pairs x 2x2 merged
CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SPECIAL = [*CHATML, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = [*CHATML, "<image>", "<video>"]
LLAVA_SIDE = 8  # SigLIP input side of the tiny LLaVA-OneVision: 4x4 patches of 2, pooled to 2x2 per frame
LLAVA_VIDEO_TOKENS = MAX_FRAMES * 2 * 2  # grid tokens per video (the one newline token is not on the grid)


def chat_template(image: str, video: str) -> str:
    """A ChatML template that writes each image/video item as the model's placeholder."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' %}}{image}{{% elif item['type'] == 'video' %}}{video}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


PROCESSOR_CODE = '''
"""Qwen2-VL processor whose video part runs without torchvision (test fixture)."""
import numpy as np
import torch
from PIL import Image
from transformers import Qwen2VLProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class NumpyVideoPatchifier:
    """Resize, normalise to [-1, 1], group frames in pairs, emit patches in 2x2 merge order."""

    def __init__(self, size=56, patch_size=14, temporal_patch_size=2, merge_size=2):
        self.size, self.patch_size = size, patch_size
        self.temporal_patch_size, self.merge_size = temporal_patch_size, merge_size

    def __call__(self, videos, **kwargs):
        if isinstance(videos, np.ndarray) and videos.ndim == 4:
            videos = [videos]
        values, grids = [], []
        p, tp, m = self.patch_size, self.temporal_patch_size, self.merge_size
        for video in videos:
            frames = np.stack([np.asarray(Image.fromarray(np.asarray(f, dtype=np.uint8)).convert("RGB")
                                          .resize((self.size, self.size))) for f in video])
            frames = frames.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
            if len(frames) % tp:
                frames = np.concatenate([frames, np.repeat(frames[-1:], tp - len(frames) % tp, axis=0)])
            t, c, h, w = frames.shape
            gt, gh, gw = t // tp, h // p, w // p
            x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            values.append(x.reshape(gt * gh * gw, c * tp * p * p))
            grids.append([gt, gh, gw])
        return BatchFeature({"pixel_values_videos": torch.from_numpy(np.concatenate(values)),
                             "video_grid_thw": torch.tensor(grids)})


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.video_processor = NumpyVideoPatchifier()
'''
LLAVA_PROCESSOR_CODE = '''
"""LLaVA-OneVision processor (videos only) that runs without torchvision (test fixture)."""
import numpy as np
import torch
from PIL import Image
from transformers import LlavaOnevisionProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class NumpyFrameResizer:
    """Resize every frame to the vision tower's side and normalise to [-1, 1]: [B, T, 3, S, S]."""

    def __init__(self, size=8):
        self.size = size

    def __call__(self, videos, **kwargs):
        if isinstance(videos, np.ndarray) and videos.ndim == 4:
            videos = [videos]
        out = [np.stack([np.asarray(Image.fromarray(np.asarray(f, dtype=np.uint8)).convert("RGB")
                                    .resize((self.size, self.size))) for f in video]) for video in videos]
        pixels = np.stack(out).astype(np.float32).transpose(0, 1, 4, 2, 3) / 127.5 - 1.0
        return BatchFeature({"pixel_values_videos": torch.from_numpy(pixels)})


class TinyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    def __init__(self, tokenizer=None, chat_template=None, **kwargs):
        self.num_image_tokens, self.vision_feature_select_strategy = 16, "full"
        self.vision_aspect_ratio = "anyres_max_9"
        self.image_token, self.video_token = "<image>", "<video>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, tokenizer, chat_template=chat_template)
        self.video_processor = NumpyFrameResizer()
'''
TASK_UTILS = '''
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(HERE, "videos", doc["video"])]


def image_doc_to_visual(doc):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(doc["id"]).integers(0, 255, size=(40, 60, 3), dtype=np.uint8)
    return [Image.fromarray(pixels)]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer with the option letter."


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().upper().startswith(doc["answer"]))}
'''


def train_tokenizer(special: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained from scratch, with ChatML and the model's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["What happens in the video? Answer with the option letter. A B C D"] * 4,
                                  trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", extra_special_tokens=special[1:])


def _text_config(fast: transformers.PreTrainedTokenizerFast, **extra: object) -> dict:
    return {"vocab_size": len(fast), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "bos_token_id": fast.pad_token_id, "eos_token_id": fast.eos_token_id,
            "pad_token_id": fast.pad_token_id, **extra}


def _save_remote_processor(directory: Path, module: str, code: str, cls: str, template: str) -> None:
    (directory / f"{module}.py").write_text(code)
    (directory / "processor_config.json").write_text(json.dumps({
        "processor_class": cls, "auto_map": {"AutoProcessor": f"{module}.{cls}"}}))
    (directory / "chat_template.jinja").write_text(template)


def save_tiny_qwen2_vl(directory: Path) -> None:
    """A random-weight Qwen2-VL, its tokenizer and processor, saved with ``save_pretrained``."""
    fast = train_tokenizer(QWEN_SPECIAL)
    ids = {token: fast.convert_tokens_to_ids(token) for token in QWEN_SPECIAL}
    config = transformers.Qwen2VLConfig(
        text_config=_text_config(fast, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                         "mrope_section": [2, 1, 1]}),
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    transformers.Qwen2VLForConditionalGeneration(config).eval().save_pretrained(directory)
    fast.save_pretrained(directory)
    transformers.Qwen2VLImageProcessor(min_pixels=FRAME_SIDE ** 2, max_pixels=FRAME_SIDE ** 2).save_pretrained(directory)
    _save_remote_processor(directory, "tiny_processing", PROCESSOR_CODE, "TinyQwen2VLProcessor",
                           chat_template("<|vision_start|><|image_pad|><|vision_end|>",
                                         "<|vision_start|><|video_pad|><|vision_end|>"))


def save_tiny_llava_onevision(directory: Path) -> None:
    """A random-weight LLaVA-OneVision (Qwen2 decoder, SigLIP tower) with its tokenizer and processor."""
    fast = train_tokenizer(LLAVA_SPECIAL)
    config = transformers.LlavaOnevisionConfig(
        text_config=_text_config(fast, model_type="qwen2"),
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": LLAVA_SIDE,
                       "patch_size": 2, "num_channels": 3},
        image_token_index=fast.convert_tokens_to_ids("<image>"),
        video_token_index=fast.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    transformers.LlavaOnevisionForConditionalGeneration(config).eval().save_pretrained(directory)
    fast.save_pretrained(directory)
    _save_remote_processor(directory, "tiny_llava_processing", LLAVA_PROCESSOR_CODE,
                           "TinyLlavaOnevisionProcessor", chat_template("<image>", "<video>"))


def write_video(path: Path, seed: int) -> None:
    """A short MPEG-4 clip of moving coloured noise."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        base = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        for t in range(FRAMES_PER_VIDEO):
            frame = np.roll(base, shift=4 * t, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_task(directory: Path) -> None:
    """Videos, a JSON dataset and the lmms-eval task YAML of a tiny multiple-choice video QA task."""
    (directory / "videos").mkdir(parents=True)
    docs = []
    for index in range(NUM_VIDEOS):
        write_video(directory / "videos" / f"clip{index}.mp4", seed=index)
        docs.append({"id": index, "video": f"clip{index}.mp4",
                     "question": f"Clip {index}: which way does the pattern move? A. left B. right C. up D. down",
                     "answer": "B"})
    (directory / "data.json").write_text(json.dumps(docs))
    (directory / "images.json").write_text(json.dumps(
        [{"id": index, "question": "What colour dominates? A. red B. green", "answer": "A"}
         for index in range(NUM_IMAGES)]))
    (directory / "utils.py").write_text(TASK_UTILS)
    for task, data, to_visual in [(TASK, "data.json", "doc_to_visual"),
                                  (IMAGE_TASK, "images.json", "image_doc_to_visual")]:
        write_task_yaml(directory, task, data, to_visual)


def write_task_yaml(directory: Path, task: str, data: str, to_visual: str) -> None:
    (directory / f"{task}.yaml").write_text(textwrap.dedent(f"""\
        task: {task}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {directory / data}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.{to_visual}
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 3
          do_sample: false
        process_results: !function utils.process_results
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        metadata:
          - version: 0.0
        """))


def write_entry_point(site: Path) -> None:
    """Expose pyproject's ``lmms_eval.models`` entry point through a throw-away dist-info on the path."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    info = site / "tokenreduce_lmms_eval_entry_point-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenreduce-lmms-eval-entry-point\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lmms_eval.models]\n" + "".join(f"{name} = {target}\n" for name, target in declared.items()))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lmms_eval_run")
    save_tiny_qwen2_vl(root / "model")
    save_tiny_llava_onevision(root / "llava")
    write_task(root / "task")
    write_entry_point(root / "site")
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_lmms_eval(root: Path, model_args: str, name: str, processes: int = 1, tasks: tuple[str, ...] = (TASK,),
                  batch_size: int = 1) -> Path:
    """Run the lmms-eval command line in a subprocess; return its output directory."""
    output = root / name
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(root / "site")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(root / "hf_home"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("LMMS_EVAL_PLUGINS", None)
    lmms_args = ["-m", "lmms_eval", "--model", "tokenreduce", "--model_args", model_args,
                 "--tasks", ",".join(tasks), "--include_path", str(root / "task"), "--batch_size", str(batch_size),
                 "--output_path", str(output), "--log_samples", "--verbosity", "WARNING"]
    if processes == 1:
        command = [sys.executable, *lmms_args, "--device", "cpu"]
    else:
        # `accelerate launch --multi_gpu` starts its processes with torch.distributed.run; on CPU, where
        # accelerate runs one process only, the same launcher is called directly (gloo backend).
        env["ACCELERATE_USE_CPU"] = "1"  # what `accelerate launch --cpu` sets: gloo, one CPU process per rank
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(_free_port()), *lmms_args]
    completed = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600,
                               check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return output


def read_outputs(output: Path, tasks: tuple[str, ...] = (TASK,)) -> tuple[dict, dict, dict, list[dict]]:
    """lmms-eval's results and per-task samples, and the tokenreduce log (header, records)."""
    results = sorted(output.rglob("*_results.json"))
    logs = sorted(output.rglob("*_tokenreduce.jsonl"))
    assert len(results) == 1 and len(logs) == 1, sorted(map(str, output.rglob("*")))
    assert logs[0].parent == results[0].parent, "the kept-token log lies next to the lmms-eval results"
    samples = {}
    for task in tasks:
        [path] = sorted(output.rglob(f"*_samples_{task}.jsonl"))
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    lines = [json.loads(line) for line in logs[0].read_text().splitlines()]
    return json.loads(results[0].read_text()), samples, lines[0]["tokenreduce"], lines[1:]


def base_args(root: Path, model: str = "model", **extra: object) -> str:
    args = {"pretrained": str(root / model), "trust_remote_code": "true", "dtype": "float32",
            "attn_implementation": "sdpa", "max_frames_num": MAX_FRAMES, **extra}
    return ",".join(f"{key}={value}" for key, value in args.items())


def _has_adapters() -> bool:
    import tokenreduce

    return hasattr(tokenreduce, "apply")


@pytest.mark.slow
@pytest.mark.skipif(not _has_adapters(), reason="tr.apply (model adapters) not available in this tree")
def test_reduced_batched_run_logs_kept_counts_below_total(workspace: Path) -> None:
    tasks = (TASK, IMAGE_TASK)
    args = base_args(workspace, model_class="Qwen2VLForConditionalGeneration", strategy="random", ratio=0.3, seed=3)
    output = run_lmms_eval(workspace, args, "random_r03", tasks=tasks, batch_size=2)
    results, samples, header, records = read_outputs(output, tasks)
    assert all("exact_match,none" in results["results"][task] for task in tasks)
    assert len(samples[TASK]) == NUM_VIDEOS and len(samples[IMAGE_TASK]) == NUM_IMAGES
    assert header["reducer"]["name"] == "random" and header["reducer"]["ratio"] == 0.3
    video_records = [r for r in records if r["task"] == TASK]
    assert sorted(r["doc_id"] for r in video_records) == list(range(NUM_VIDEOS))
    assert sorted(r["doc_id"] for r in records if r["task"] == IMAGE_TASK) == list(range(NUM_IMAGES))
    for record in video_records:  # batches of two videos of one grid: counts split per sample
        assert record["visual_tokens"] == VIDEO_TOKENS
        assert record["kept_tokens"] == math.ceil(0.3 * VIDEO_TOKENS) < VIDEO_TOKENS
        assert record["reduction_seconds"] > 0
    summary = header["summary"]
    assert summary["kept_tokens"] == NUM_VIDEOS * math.ceil(0.3 * VIDEO_TOKENS)
    assert summary["visual_tokens"] == NUM_VIDEOS * VIDEO_TOKENS


@pytest.mark.slow
def test_unreduced_data_parallel_batched_run_of_video_and_image_tasks(workspace: Path) -> None:
    tasks = (TASK, IMAGE_TASK)
    output = run_lmms_eval(workspace, base_args(workspace, strategy="none"), "unreduced_dp", processes=2,
                           tasks=tasks, batch_size=2)
    results, samples, header, records = read_outputs(output, tasks)
    assert header["world_size"] == 2 and header["reducer"] is None and header["max_frames_num"] == MAX_FRAMES
    for task, count in [(TASK, NUM_VIDEOS), (IMAGE_TASK, NUM_IMAGES)]:
        assert "exact_match,none" in results["results"][task]  # lmms-eval gathered both ranks' samples
        assert len(samples[task]) == count
        assert sorted(r["doc_id"] for r in records if r["task"] == task) == list(range(count))
    assert {r["rank"] for r in records} == {0, 1}, "the kept-token log gathers every rank"
    assert all(r["kept_tokens"] is None and r["visual_tokens"] is None for r in records)
    video_prompts = [r["prompt_tokens"] for r in records if r["task"] == TASK]
    image_prompts = [r["prompt_tokens"] for r in records if r["task"] == IMAGE_TASK]
    # every video prompt holds its 16 merged video tokens; the image prompts hold fewer visual tokens
    assert min(video_prompts) > VIDEO_TOKENS and max(image_prompts) < min(video_prompts)


@pytest.mark.slow
@pytest.mark.skipif(not _has_adapters(), reason="tr.apply (model adapters) not available in this tree")
def test_llava_onevision_run_through_its_model_class(workspace: Path) -> None:
    args = base_args(workspace, model="llava", model_class="LlavaOnevisionForConditionalGeneration",
                     strategy="random", ratio=0.3)
    results, samples, header, records = read_outputs(run_lmms_eval(workspace, args, "llava_random_r03"))
    assert "exact_match,none" in results["results"][TASK] and len(samples[TASK]) == NUM_VIDEOS
    assert header["reducer"]["name"] == "random"
    assert sorted(r["doc_id"] for r in records) == list(range(NUM_VIDEOS))
    for record in records:
        assert record["visual_tokens"] == LLAVA_VIDEO_TOKENS
        assert record["kept_tokens"] == math.ceil(0.3 * LLAVA_VIDEO_TOKENS)
