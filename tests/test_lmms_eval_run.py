"""Real lmms-eval runs through the ``tokenreduce`` model plugin, on CPU, without network.

Everything is generated in a temporary directory at run time: tiny random-weight models of every
adapter-supported family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, LLaVA-NeXT-Video) saved
with ``save_pretrained`` (tokenizers trained from scratch), a handful of short MP4 videos written
with PyAV, local JSON datasets and lmms-eval task YAMLs loaded through ``--include_path``.
lmms-eval finds the model through the ``lmms_eval.models`` entry point declared in pyproject.toml
(exposed to the subprocess through a throw-away ``.dist-info``, which also registers a strategy
that always fails). The tests check the wiring (results and per-sample kept-token logs written,
counts exact, failures surfaced), not accuracy.

Transformers 5 video processors need torchvision, which has no build for the CPU torch used here;
the saved checkpoints therefore ship a remote-code processor (``trust_remote_code=true``) whose
video part is NumPy: the Qwen patchification (resize, normalise, frame pairs, 2x2 merge order) and
the LLaVA resized frames. The plugin code path is the ordinary ``AutoProcessor`` one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install 'tokenreduce[eval]'")
av = pytest.importorskip("av")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tomllib = pytest.importorskip("tomllib")
yaml = pytest.importorskip("yaml")

from tiny_checkpoints import (
    LLAVA_SPECIAL,
    QWEN_SPECIAL,
    chat_template,
    llava_next_video_config,
    llava_onevision_config,
    qwen2_5_vl_config,
    qwen2_vl_config,
    qwen3_vl_config,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
TASK = "tokenreduce_tiny_video_qa"
IMAGE_TASK = "tokenreduce_tiny_image_qa"
MULTI_TASK = "tokenreduce_tiny_multi_video_qa"
CHOICE_TASK = "tokenreduce_tiny_video_choice"  # multiple choice by likelihood (loglikelihood requests)
CHOICES = ["A", "B", "C", "D"]
NUM_IMAGES = 2
NUM_VIDEOS = 4
FRAMES_PER_VIDEO = 12
SHORT_FRAMES = 4  # the short clips of the multi-video task: fewer frames than MAX_FRAMES, a smaller grid
MAX_FRAMES = 8
# multi-video docs: several clips per sample, of two grid sizes, so one adapter group mixes samples
MULTI_VIDEOS = [["clip0.mp4", "short0.mp4"], ["short1.mp4", "clip1.mp4", "clip2.mp4"], ["short2.mp4", "short3.mp4"]]
FRAME_SIDE = 56  # the fixture processor resizes frames to 56x56: 4x4 patches of 14, merged 2x2
FAILING_STRATEGY = "always_fails"


def qwen_video_tokens(frames: int) -> int:
    """LLM grid tokens of a video of ``frames`` frames: frame pairs x 2x2 merged patches."""
    return math.ceil(frames / 2) * (FRAME_SIDE // 14) ** 2 // 4


def llava_video_tokens(frames: int) -> int:
    """Grid tokens of a LLaVA video: 2x2 pooled tokens per frame (OneVision's newline is off the grid)."""
    return frames * 2 * 2


PROCESSOR_CODE = '''
"""Qwen-VL and LLaVA processors whose video part runs without torchvision (test fixture)."""
import numpy as np
import torch
from PIL import Image
from transformers import (LlavaNextVideoProcessor, LlavaOnevisionProcessor, Qwen2_5_VLProcessor,
                          Qwen2VLProcessor, Qwen3VLProcessor)
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


def resized(video, size):
    """Frames as RGB uint8 ``[T, size, size, 3]``."""
    return np.stack([np.asarray(Image.fromarray(np.asarray(f, dtype=np.uint8)).convert("RGB").resize((size, size)))
                     for f in video])


class NumpyVideoPatchifier:
    """Resize, normalise to [-1, 1], group frames in pairs, emit patches in 2x2 merge order."""

    def __init__(self, size=56, patch_size=14, temporal_patch_size=2, merge_size=2):
        self.size, self.patch_size = size, patch_size
        self.temporal_patch_size, self.merge_size = temporal_patch_size, merge_size

    def __call__(self, videos, video_metadata=None, return_metadata=False, **kwargs):
        if isinstance(videos, np.ndarray) and videos.ndim == 4:
            videos = [videos]
        values, grids = [], []
        p, tp, m = self.patch_size, self.temporal_patch_size, self.merge_size
        for video in videos:
            frames = resized(video, self.size).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
            if len(frames) % tp:
                frames = np.concatenate([frames, np.repeat(frames[-1:], tp - len(frames) % tp, axis=0)])
            t, c, h, w = frames.shape
            gt, gh, gw = t // tp, h // p, w // p
            x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            values.append(x.reshape(gt * gh * gw, c * tp * p * p))
            grids.append([gt, gh, gw])
        out = {"pixel_values_videos": torch.from_numpy(np.concatenate(values)), "video_grid_thw": torch.tensor(grids)}
        if return_metadata:
            out["video_metadata"] = video_metadata
        return BatchFeature(out)


class NumpyFrameResizer:
    """Resize every frame to the vision tower's side and normalise to [-1, 1]: [B, T, 3, S, S]."""

    def __init__(self, size=8):
        self.size = size

    def __call__(self, videos, **kwargs):
        if isinstance(videos, np.ndarray) and videos.ndim == 4:
            videos = [videos]
        pixels = np.stack([resized(video, self.size) for video in videos]).astype(np.float32)
        return BatchFeature({"pixel_values_videos": torch.from_numpy(pixels.transpose(0, 1, 4, 2, 3) / 127.5 - 1.0)})


class QwenTokens:
    """The Qwen processors' token attributes, set without their torchvision video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
        for name in ("image", "video", "vision_start", "vision_end"):
            setattr(self, f"{name}_token_id", tokenizer.convert_tokens_to_ids(getattr(self, f"{name}_token")))
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.video_processor = NumpyVideoPatchifier()


class LlavaTokens:
    """The LLaVA video processors' attributes (OneVision's and NeXT-Video's), videos only."""

    def __init__(self, tokenizer=None, chat_template=None, **kwargs):
        self.num_image_tokens, self.vision_feature_select_strategy = 16, "full"
        self.vision_aspect_ratio, self.patch_size, self.num_additional_image_tokens = "anyres_max_9", 2, 0
        self.image_token, self.video_token = "<image>", "<video>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, tokenizer, chat_template=chat_template)
        self.video_processor = NumpyFrameResizer()


class TinyQwen2VLProcessor(QwenTokens, Qwen2VLProcessor):
    pass


class TinyQwen2_5_VLProcessor(QwenTokens, Qwen2_5_VLProcessor):
    pass


class TinyQwen3VLProcessor(QwenTokens, Qwen3VLProcessor):
    pass


class TinyLlavaOnevisionProcessor(LlavaTokens, LlavaOnevisionProcessor):
    pass


class TinyLlavaNextVideoProcessor(LlavaTokens, LlavaNextVideoProcessor):
    pass
'''
FAILING_STRATEGY_CODE = '''
"""A pre-LLM strategy whose reduce raises, on every rank or on one (test fixture for failure reporting)."""
import dataclasses
import os

from tokenreduce.strategies.random_select import RandomSelect


class AlwaysFails(RandomSelect):
    @dataclasses.dataclass
    class Config(RandomSelect.Config):
        only_rank: int = -1  # -1: every rank

    def reduce(self, tokens):
        if self.config.only_rank in (-1, int(os.environ.get("RANK", "0"))):
            raise RuntimeError("always_fails: this reducer fails on purpose")
        return super().reduce(tokens)
'''
TASK_UTILS = '''
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(HERE, "videos", doc["video"])]


def multi_doc_to_visual(doc):
    return [os.path.join(HERE, "videos", name) for name in doc["videos"]]


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


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """One tiny checkpoint: its transformers class, config, fixture processor and grid size."""

    model_class: str
    config: Callable[[transformers.PreTrainedTokenizerFast], transformers.PretrainedConfig]
    processor_class: str
    video_tokens: Callable[[int], int]  # grid tokens of a video of n frames

    @property
    def qwen(self) -> bool:
        return self.processor_class.startswith("TinyQwen")


TINY_MODELS = {
    "qwen2_vl": TinyModel("Qwen2VLForConditionalGeneration", qwen2_vl_config, "TinyQwen2VLProcessor",
                          qwen_video_tokens),
    "qwen2_5_vl": TinyModel("Qwen2_5_VLForConditionalGeneration", qwen2_5_vl_config, "TinyQwen2_5_VLProcessor",
                            qwen_video_tokens),
    "qwen3_vl": TinyModel("Qwen3VLForConditionalGeneration", qwen3_vl_config, "TinyQwen3VLProcessor",
                          qwen_video_tokens),
    "llava_onevision": TinyModel("LlavaOnevisionForConditionalGeneration", llava_onevision_config,
                                 "TinyLlavaOnevisionProcessor", llava_video_tokens),
    "llava_next_video": TinyModel("LlavaNextVideoForConditionalGeneration", llava_next_video_config,
                                  "TinyLlavaNextVideoProcessor", llava_video_tokens),
}


def save_tiny_model(spec: TinyModel, directory: Path) -> None:
    """A random-weight model, its tokenizer and its fixture processor, saved with ``save_pretrained``."""
    fast = train_tokenizer(QWEN_SPECIAL if spec.qwen else LLAVA_SPECIAL)
    torch.manual_seed(0)
    getattr(transformers, spec.model_class)(spec.config(fast)).eval().save_pretrained(directory)
    fast.save_pretrained(directory)
    if spec.qwen:
        transformers.Qwen2VLImageProcessor(min_pixels=FRAME_SIDE ** 2, max_pixels=FRAME_SIDE ** 2).save_pretrained(
            directory)
        template = chat_template("<|vision_start|><|image_pad|><|vision_end|>",
                                 "<|vision_start|><|video_pad|><|vision_end|>")
    else:
        template = chat_template("<image>", "<video>")
    (directory / "tiny_processing.py").write_text(PROCESSOR_CODE)
    (directory / "processor_config.json").write_text(json.dumps({
        "processor_class": spec.processor_class,
        "auto_map": {"AutoProcessor": f"tiny_processing.{spec.processor_class}"}}))
    (directory / "chat_template.jinja").write_text(template)


def write_video(path: Path, seed: int, frames: int = FRAMES_PER_VIDEO) -> None:
    """A short MPEG-4 clip of moving coloured noise."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        base = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        for t in range(frames):
            frame = np.roll(base, shift=4 * t, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_task(directory: Path) -> None:
    """Videos, JSON datasets and lmms-eval task YAMLs of tiny multiple-choice video and image QA tasks."""
    (directory / "videos").mkdir(parents=True)
    docs = []
    for index in range(NUM_VIDEOS):
        write_video(directory / "videos" / f"clip{index}.mp4", seed=index)
        write_video(directory / "videos" / f"short{index}.mp4", seed=10 + index, frames=SHORT_FRAMES)
        docs.append({"id": index, "video": f"clip{index}.mp4",
                     "question": f"Clip {index}: which way does the pattern move? A. left B. right C. up D. down",
                     "answer": "B"})
    (directory / "data.json").write_text(json.dumps(docs))
    (directory / "multi.json").write_text(json.dumps(
        [{"id": index, "videos": videos, "question": f"Do the {len(videos)} clips match? A. yes B. no", "answer": "A"}
         for index, videos in enumerate(MULTI_VIDEOS)]))
    (directory / "images.json").write_text(json.dumps(
        [{"id": index, "question": "What colour dominates? A. red B. green", "answer": "A"}
         for index in range(NUM_IMAGES)]))
    (directory / "utils.py").write_text(TASK_UTILS)
    for task, data, to_visual in [(TASK, "data.json", "doc_to_visual"),
                                  (MULTI_TASK, "multi.json", "multi_doc_to_visual"),
                                  (IMAGE_TASK, "images.json", "image_doc_to_visual")]:
        write_task_yaml(directory, task, data, to_visual)
    (directory / f"{CHOICE_TASK}.yaml").write_text(textwrap.dedent(f"""\
        task: {CHOICE_TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {directory / "data.json"}
        test_split: test
        output_type: multiple_choice
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_choice: {json.dumps(CHOICES)}
        doc_to_target: answer
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        metadata:
          - version: 0.0
        """))


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


def write_entry_points(site: Path) -> None:
    """Expose pyproject's ``lmms_eval.models`` entry point, and the failing test strategy, through a
    throw-away dist-info on the path."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    info = site / "tokenreduce_lmms_eval_entry_point-0.0.dist-info"
    info.mkdir(parents=True)
    (site / "tokenreduce_test_failing.py").write_text(FAILING_STRATEGY_CODE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tokenreduce-lmms-eval-entry-point\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lmms_eval.models]\n" + "".join(f"{name} = {target}\n" for name, target in declared.items())
        + f"[tokenreduce.strategies]\n{FAILING_STRATEGY} = tokenreduce_test_failing:AlwaysFails\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lmms_eval_run")
    for name, spec in TINY_MODELS.items():
        save_tiny_model(spec, root / name)
    write_task(root / "task")
    write_entry_points(root / "site")
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lmms_eval(root: Path, arguments: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    """Run the lmms-eval command line offline in a subprocess (``processes`` > 1: data parallel on CPU)."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(root / "site")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(root / "hf_home"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("LMMS_EVAL_PLUGINS", None)
    lmms_args = ["-m", "lmms_eval", *arguments, "--include_path", str(root / "task"), "--verbosity", "WARNING"]
    if processes == 1:
        command = [sys.executable, *lmms_args, "--device", "cpu"]
    else:
        # `accelerate launch --multi_gpu` starts its processes with torch.distributed.run; on CPU, where
        # accelerate runs one process only, the same launcher is called directly (gloo backend).
        env["ACCELERATE_USE_CPU"] = "1"  # what `accelerate launch --cpu` sets: gloo, one CPU process per rank
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(_free_port()), *lmms_args]
    return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False)


def _tail(completed: subprocess.CompletedProcess) -> str:
    return completed.stdout[-3000:] + completed.stderr[-5000:]


def run_lmms_eval(root: Path, model_args: str, name: str, processes: int = 1, tasks: tuple[str, ...] = (TASK,),
                  batch_size: int = 1) -> Path:
    """One successful lmms-eval run with ``--output_path``; return that directory."""
    output = root / name
    completed = lmms_eval(root, ["--model", "tokenreduce", "--model_args", model_args, "--tasks", ",".join(tasks),
                                 "--batch_size", str(batch_size), "--output_path", str(output), "--log_samples"],
                          processes)
    assert completed.returncode == 0, _tail(completed)
    return output


def read_outputs(output: Path, tasks: tuple[str, ...] = (TASK,)) -> tuple[dict, dict, dict, list[dict]]:
    """lmms-eval's results and per-task samples, and the tokenreduce log (header, records)."""
    results = sorted(output.rglob("*_results.json"))
    logs = sorted(output.rglob("*_tokenreduce.jsonl"))
    assert len(results) == 1 and len(logs) == 1, sorted(map(str, output.rglob("*")))
    assert logs[0].parent == results[0].parent, "the kept-token log lies next to the lmms-eval results"
    assert logs[0].name.replace("_tokenreduce.jsonl", "") == results[0].name.replace("_results.json", ""), \
        "the log has the date prefix of its results file"
    samples = {}
    for task in tasks:
        [path] = sorted(output.rglob(f"*_samples_{task}.jsonl"))
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    lines = [json.loads(line) for line in logs[0].read_text().splitlines()]
    return json.loads(results[0].read_text()), samples, lines[0]["tokenreduce"], lines[1:]


def model_args(root: Path, model: str, **extra: object) -> str:
    args = {"pretrained": str(root / model), "trust_remote_code": "true", "dtype": "float32",
            "attn_implementation": "sdpa", "max_frames_num": MAX_FRAMES, **extra}
    return ",".join(f"{key}={value}" for key, value in args.items())


def _has_adapters() -> bool:
    import tokenreduce

    return hasattr(tokenreduce, "apply")


needs_adapters = pytest.mark.skipif(not _has_adapters(), reason="tr.apply (model adapters) not available")


CONFIG_MODELS = ("qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video")
# per 2x2 frame of the tiny LLaVA: 2 dominant tokens kept, the other 2 merged into 1 contextual token inserted
VISIONZIP = {"strategy": "visionzip", "dominant": 2, "contextual": 1, "cls_token": "false"}
BATCHED_TASKS = (TASK, MULTI_TASK, IMAGE_TASK)


@pytest.fixture(scope="module")
def config_file_run(workspace: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One lmms-eval process running a ``--config`` list (one import of lmms-eval for many runs):
    ``random`` at ratio 0.3 in batches of two on Qwen2-VL over ``BATCHED_TASKS``, and on each model of
    ``CONFIG_MODELS`` over the video task, VisionZip (an encoder stage inserting new tokens) on
    LLaVA-OneVision, the multiple-choice task (loglikelihood requests) on Qwen2-VL, then a run whose
    reducer always fails. ``output_path`` is
    set in the file only, never on the command line."""
    root = workspace / "config_runs"
    random = {"strategy": "random", "ratio": 0.3}
    runs = [("qwen2_vl", "qwen2_vl", BATCHED_TASKS, {**random, "seed": 3}),
            *[(name, name, (TASK,), random) for name in CONFIG_MODELS],
            ("llava_visionzip", "llava_onevision", (TASK,), VISIONZIP),
            ("qwen2_vl_choice", "qwen2_vl", (CHOICE_TASK,), random)]
    entries = [{"model": "tokenreduce", "tasks": ",".join(tasks), "batch_size": 2, "log_samples": True,
                "output_path": str(root / name),
                "model_args": model_args(workspace, model, model_class=TINY_MODELS[model].model_class, **reducer)}
               for name, model, tasks, reducer in runs]
    entries.append({"model": "tokenreduce", "tasks": TASK, "batch_size": 2, "output_path": str(root / "failing"),
                    "model_args": model_args(workspace, "qwen2_vl", strategy=FAILING_STRATEGY, ratio=0.3)})
    config = workspace / "lmms_eval_config.yaml"
    config.write_text(yaml.safe_dump(entries))
    return root, lmms_eval(workspace, ["--config", str(config)])


@pytest.mark.slow
@needs_adapters
def test_reduced_batched_run_attributes_kept_counts_to_each_sample(
        config_file_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, completed = config_file_run
    tasks = BATCHED_TASKS
    assert (root / "qwen2_vl").is_dir(), _tail(completed)
    results, samples, header, records = read_outputs(root / "qwen2_vl", tasks)
    assert all("exact_match,none" in results["results"][task] for task in tasks)
    assert [len(samples[task]) for task in tasks] == [NUM_VIDEOS, len(MULTI_VIDEOS), NUM_IMAGES]
    assert header["reducer"] == {**header["reducer"], "name": "random", "ratio": 0.3, "seed": 3}
    by_task = {task: {r["doc_id"]: r for r in records if r["task"] == task} for task in tasks}
    assert [sorted(by_task[task]) for task in tasks] == [list(range(n)) for n in (NUM_VIDEOS, len(MULTI_VIDEOS),
                                                                                   NUM_IMAGES)]
    grid = {"clip": qwen_video_tokens(MAX_FRAMES), "short": qwen_video_tokens(SHORT_FRAMES)}
    expected = {(TASK, i): [grid["clip"]] for i in range(NUM_VIDEOS)}
    expected.update({(MULTI_TASK, i): [grid["short" if name.startswith("short") else "clip"] for name in videos]
                     for i, videos in enumerate(MULTI_VIDEOS)})
    for (task, doc_id), sizes in expected.items():  # every video keeps ceil(0.3 n) of its n tokens
        record = by_task[task][doc_id]
        assert (record["visual_tokens"], record["kept_tokens"]) == (sum(sizes), sum(math.ceil(0.3 * n) for n in sizes))
        assert record["reduction_seconds"] > 0
    for record in by_task[IMAGE_TASK].values():  # images are not reduced: no counts
        assert record["visual_tokens"] is None and record["kept_tokens"] is None
    summary = header["summary"]
    assert summary["visual_tokens"] == sum(map(sum, expected.values()))
    assert summary["kept_tokens"] == sum(math.ceil(0.3 * n) for sizes in expected.values() for n in sizes)


@pytest.mark.slow
def test_unreduced_data_parallel_batched_run_of_video_and_image_tasks(workspace: Path) -> None:
    tasks = (TASK, IMAGE_TASK)
    output = run_lmms_eval(workspace, model_args(workspace, "qwen2_vl", strategy="none"), "unreduced_dp",
                           processes=2, tasks=tasks, batch_size=2)
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
    assert min(video_prompts) > qwen_video_tokens(MAX_FRAMES) and max(image_prompts) < min(video_prompts)


@pytest.mark.slow
@needs_adapters
@pytest.mark.parametrize("name", CONFIG_MODELS)
def test_reduced_run_of_each_model_family_from_a_config_file(config_file_run: tuple[Path, subprocess.CompletedProcess],
                                                             name: str) -> None:
    root, completed = config_file_run
    assert (root / name).is_dir(), _tail(completed)
    results, samples, header, records = read_outputs(root / name)
    assert "exact_match,none" in results["results"][TASK] and len(samples[TASK]) == NUM_VIDEOS
    assert header["reducer"]["name"] == "random" and header["pretrained"].endswith(name)
    assert sorted(r["doc_id"] for r in records) == list(range(NUM_VIDEOS))
    tokens = TINY_MODELS[name].video_tokens(MAX_FRAMES)
    for record in records:
        assert (record["visual_tokens"], record["kept_tokens"]) == (tokens, math.ceil(0.3 * tokens))
        assert record["inserted_tokens"] == 0


@pytest.mark.slow
@needs_adapters
def test_visionzip_run_counts_inserted_tokens(config_file_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, completed = config_file_run
    assert (root / "llava_visionzip").is_dir(), _tail(completed)
    results, samples, header, records = read_outputs(root / "llava_visionzip")
    assert "exact_match,none" in results["results"][TASK] and len(samples[TASK]) == NUM_VIDEOS
    assert header["reducer"]["name"] == "visionzip"
    assert sorted(r["doc_id"] for r in records) == list(range(NUM_VIDEOS))
    for record in records:  # MAX_FRAMES frames of 4 tokens: 2 kept and 1 inserted per frame
        assert (record["visual_tokens"], record["kept_tokens"], record["inserted_tokens"]) == (
            4 * MAX_FRAMES, 3 * MAX_FRAMES, MAX_FRAMES)


@pytest.mark.slow
@needs_adapters
def test_failing_reducer_stops_the_run_with_an_error_record(config_file_run: tuple[Path, subprocess.CompletedProcess]
                                                            ) -> None:
    root, completed = config_file_run
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, _tail(completed)
    assert "tokenreduce: generation failed on rank 0" in output and "always_fails: this reducer fails" in output
    assert not list((root / "failing").rglob("*_results.json"))
    [path] = sorted((root / "failing").rglob("*_tokenreduce_error_rank0.json"))
    error = json.loads(path.read_text())["tokenreduce_error"]
    assert error["error"] == "RuntimeError" and error["message"] == "always_fails: this reducer fails on purpose"
    assert error["task"] == TASK and error["rank"] == 0 and len(error["doc_ids"]) == 2
    assert error["reducer"]["name"] == FAILING_STRATEGY and "tokenreduce_test_failing.py" in error["traceback"]


@pytest.mark.slow
@needs_adapters
def test_multiple_choice_scores_every_choice_by_its_loss_under_the_reducer(
        workspace: Path, config_file_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, completed = config_file_run
    assert (root / "qwen2_vl_choice").is_dir(), _tail(completed)
    results, samples, header, records = read_outputs(root / "qwen2_vl_choice", (CHOICE_TASK,))
    assert "acc,none" in results["results"][CHOICE_TASK] and header["reducer"]["name"] == "random"
    tokens = qwen_video_tokens(MAX_FRAMES)
    assert sorted(r["doc_id"] for r in records) == list(range(NUM_VIDEOS))
    assert all((r["visual_tokens"], r["kept_tokens"]) == (tokens, math.ceil(0.3 * tokens)) for r in records)
    # per choice (loss, greedy), as lmms-eval logs them (it writes the numbers as text)
    scored = {sample["doc_id"]: [(float(loss), greedy) for loss, greedy in sample["filtered_resps"]]
              for sample in samples[CHOICE_TASK]}
    assert sorted(scored) == list(range(NUM_VIDEOS))
    for doc_id, per_choice in scored.items():
        losses = [loss for loss, _ in per_choice]
        assert len(losses) == len(CHOICES) and all(math.isfinite(x) and x > 0 for x in losses)
        assert len(set(losses)) > 1, "the choices are scored differently"
    # lmms-eval picks the choice of lowest loss: its accuracy is the share of docs where that is the answer
    docs = json.loads((workspace / "task" / "data.json").read_text())
    picked = {doc_id: CHOICES[min(range(len(CHOICES)), key=lambda i: per_choice[i][0])]
              for doc_id, per_choice in scored.items()}
    accuracy = sum(picked[doc_id] == docs[doc_id]["answer"] for doc_id in scored) / len(scored)
    assert results["results"][CHOICE_TASK]["acc,none"] == pytest.approx(accuracy)
    # the same loss through the public API: the checkpoint, its processor and tr.apply with labels
    doc_id = 0
    expected = choice_loss(workspace, doc_id, CHOICES[0])
    assert scored[doc_id][0][0] == pytest.approx(expected, rel=1e-4)


def choice_loss(workspace: Path, doc_id: int, choice: str) -> float:
    """The mean loss of ``" " + choice`` after doc ``doc_id``'s prompt on Qwen2-VL under ``random`` at
    ratio 0.3, computed in this process with the library's public API."""
    import tokenreduce as tr
    from tokenreduce.integrations.lmms_eval_video import sample_video

    path = workspace / "qwen2_vl"
    processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=True)
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    doc = json.loads((workspace / "task" / "data.json").read_text())[doc_id]
    frames, metadata = sample_video(str(workspace / "task" / "videos" / doc["video"]), MAX_FRAMES)
    text = doc["question"] + "\nAnswer with the option letter."
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    continuation = " " + choice
    length = len(processor.tokenizer(prompt + continuation)["input_ids"]) - len(processor.tokenizer(prompt)["input_ids"])
    inputs = processor(text=[prompt + continuation], videos=[frames], video_metadata=[metadata],
                       do_sample_frames=False, return_tensors="pt")
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -length:] = inputs["input_ids"][:, -length:]
    with torch.no_grad(), tr.apply(model, tr.build("random", ratio=0.3)):
        return float(model(**inputs, labels=labels).loss)


def test_a_model_that_cannot_be_set_up_stops_the_run() -> None:
    from tokenreduce.errors import UnknownNameError
    from tokenreduce.integrations.lmms_eval_model import EvaluationFailed, TokenReduceLMM

    with pytest.raises(EvaluationFailed, match="could not be set up: UnknownNameError") as failure:
        TokenReduceLMM(pretrained="unused", strategy="no_such_strategy")
    assert isinstance(failure.value.__cause__, UnknownNameError)
    assert not isinstance(failure.value, Exception), "lmms-eval's `except Exception` must not swallow it"



def test_a_log_that_cannot_be_written_stops_the_run(tmp_path: Path) -> None:
    from tokenreduce.integrations.lmms_eval_args import parse_model_args
    from tokenreduce.integrations.lmms_eval_log import ReductionLog
    from tokenreduce.integrations.lmms_eval_model import EvaluationFailed, TokenReduceLMM

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model = TokenReduceLMM.__new__(TokenReduceLMM)  # only what writing the log needs: no checkpoint
    model.args = parse_model_args({"pretrained": "unused", "strategy": "none",
                                   "reduction_log": str(blocker / "log.jsonl")})
    model.log, model._rank, model._world_size = ReductionLog({}), 0, 1
    with pytest.raises(EvaluationFailed, match="log could not be written: (FileExistsError|NotADirectoryError)"):
        model.clean()
    model.args = parse_model_args({"pretrained": "unused", "strategy": "none",
                                   "reduction_log": str(tmp_path / "log.jsonl")})
    assert model.write_reduction_log() == tmp_path / "log.jsonl"  # the same object writes where it can


@pytest.mark.slow
@needs_adapters
def test_failure_on_one_rank_stops_every_rank(workspace: Path) -> None:
    output = workspace / "failing_dp"
    args = model_args(workspace, "qwen2_vl", strategy=FAILING_STRATEGY, ratio=0.3, only_rank=1)
    completed = lmms_eval(workspace, ["--model", "tokenreduce", "--model_args", args, "--tasks", TASK,
                                      "--output_path", str(output)], processes=2)
    assert completed.returncode != 0, _tail(completed)  # rank 1 exits with 1, the launcher stops rank 0
    assert not list(output.rglob("*_results.json")) and not list(output.rglob("*_tokenreduce.jsonl"))
    [path] = sorted(output.rglob("*_tokenreduce_error_rank*.json"))
    error = json.loads(path.read_text())["tokenreduce_error"]
    assert path.name.endswith("_rank1.json") and error["rank"] == 1 and error["error"] == "RuntimeError"
