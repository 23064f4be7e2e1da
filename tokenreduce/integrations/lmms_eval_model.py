"""The ``tokenreduce`` lmms-eval model: any adapter-supported Hugging Face VLM, with a reducer applied.

Loaded by lmms-eval through the ``lmms_eval.models`` entry point (see ``lmms_eval.py``)::

    accelerate launch --num_processes 8 -m lmms_eval --model tokenreduce \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,strategy=st_simdiff,ratio=0.3,max_frames_num=64 \\
        --tasks videomme --batch_size 1 --output_path ./logs

Each process loads the model on its own device (``accelerate`` sets one per process); lmms-eval
shards the requests over the processes and gathers the results. Kept-token counts and reduction
times are gathered to rank 0 and written to ``<output_path>/<model>/<date>_tokenreduce.jsonl``, next
to lmms-eval's ``<date>_results.json``.

lmms-eval catches every ``Exception`` raised while it evaluates, logs it and exits with status 0;
a failure of this model (loading, the reducer, the adapter, generation) is therefore raised as
``EvaluationFailed``, a ``SystemExit``: the run stops with status 1, and a failed request also
leaves an error record next to where the log would be.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import gather_object
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm

import tokenreduce as tr
from tokenreduce.adapters import hf
from tokenreduce.integrations.lmms_eval_args import EvalArgs, parse_model_args
from tokenreduce.integrations.lmms_eval_log import ReductionLog, ReductionRecorder, per_sample
from tokenreduce.integrations.lmms_eval_video import sample_video

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
PLACEHOLDERS = ("<image>", "<video>")


def _load_model(settings: Any, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """``from_pretrained`` of the model class (``auto``: AutoModelForImageTextToText) and its processor."""
    if settings.model_class == "auto":
        model_cls = transformers.AutoModelForImageTextToText
    else:
        model_cls = getattr(transformers, settings.model_class, None)
        if model_cls is None:
            raise ValueError(f"model_args: model_class={settings.model_class!r} is not a transformers class")
    kwargs: dict[str, Any] = {"trust_remote_code": settings.trust_remote_code,
                              "dtype": settings.dtype if settings.dtype == "auto" else getattr(torch, settings.dtype)}
    if settings.attn_implementation is not None:
        kwargs["attn_implementation"] = settings.attn_implementation
    model = model_cls.from_pretrained(settings.pretrained, **kwargs).to(device).eval()
    processor = transformers.AutoProcessor.from_pretrained(settings.pretrained,
                                                           trust_remote_code=settings.trust_remote_code)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"  # batched generation continues every row at the same position
    return model, processor


class EvaluationFailed(SystemExit):
    """The tokenreduce model failed; the run must stop with a non-zero status.

    A ``SystemExit`` on purpose: lmms-eval 0.7 wraps each evaluation in ``except Exception``, logs
    the error and exits with status 0, which would let a broken reducer pass for a finished run.
    The original exception is the ``__cause__``; the message (printed on exit) names it.
    """


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _stop(message: str, exc: BaseException) -> EvaluationFailed:
    """Log ``message`` with the traceback of ``exc``; the exception that ends the run."""
    eval_logger.error(f"{message}\n{_traceback(exc)}")
    return EvaluationFailed(message)


def _running_evaluation() -> tuple[Any, str | None] | None:
    """The ``EvaluationTracker`` and ``datetime_str`` of the lmms-eval ``simple_evaluate`` running this model.

    lmms-eval resolves ``output_path`` from the command line and from its ``--config`` file into the
    tracker, which writes ``<output_path>/<model>/<date_id>_results.json``; reading the tracker from
    the calling ``simple_evaluate`` finds that folder however the path was given. ``None`` when the
    model is called outside ``simple_evaluate``.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "simple_evaluate" and frame.f_globals.get("__name__") == "lmms_eval.evaluator":
            date = frame.f_locals.get("datetime_str")
            return frame.f_locals.get("evaluation_tracker"), date if isinstance(date, str) else None
        frame = frame.f_back
    return None


class TokenReduceLMM(lmms):
    """lmms-eval model that evaluates a VLM under a tokenreduce reducer (``generate_until`` and
    ``loglikelihood``, which multiple-choice tasks use)."""

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        try:
            self._setup(model_args)
        except Exception as exc:
            raise _stop(f"tokenreduce: the model could not be set up: {type(exc).__name__}: {exc}", exc) from exc

    def _setup(self, model_args: dict[str, Any]) -> None:
        model_args.pop("max_batch_size", None)  # lmms-eval passes it to every model; batching is fixed here
        self.args: EvalArgs = parse_model_args(model_args)
        settings = self.args.run
        self.reducer = tr.build(self.args.reducer) if self.args.reducer is not None else None
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            self._device = self.accelerator.device  # one device per process
        else:
            default = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = torch.device(settings.device or default)
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self._model, self.processor = _load_model(settings, self._device)
        if self.reducer is not None:
            with tr.apply(self._model, self.reducer):  # an unsupported model/stage fails here, before any data
                pass
        self.recorder = ReductionRecorder(self.reducer) if self.reducer is not None else None
        self.log = ReductionLog({
            "pretrained": settings.pretrained,
            "reducer": self.reducer.config.to_dict() if self.reducer is not None else None,
            "max_frames_num": settings.max_frames_num,
            "world_size": self._world_size,
        })
        if self._world_size > 1 and self.accelerator.is_local_main_process:
            eval_logger.info(f"tokenreduce: data parallel over {self._world_size} processes")

    # ----- properties lmms-eval reads --------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def batch_size(self) -> int:
        return self.args.run.batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ----- requests --------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request ``(loss, greedy)``: the mean negative log-likelihood of the continuation given the
        context and its visuals, as the model computes it under the reducer (``labels`` on the
        continuation only), and whether greedy decoding would produce the continuation. lmms-eval's
        multiple-choice scoring picks the choice of lowest loss (its convention; ``llava`` returns the
        same quantity). The pair travels as a ``GenerationResult``: lmms-eval 0.7's evaluator turns any
        other response that is not text into its string."""
        results = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="tokenreduce scoring")
        for request in requests:
            try:
                results.append(GenerationResult(self._loglikelihood(*request.args)))
            except Exception as exc:
                raise self._failed(exc, [request.args]) from exc
            progress.update(1)
        progress.close()
        return results

    def _loglikelihood(self, context: str, continuation: Any, doc_to_visual: Any = None, doc_id: int | None = None,
                       task: str | None = None, split: str | None = None) -> tuple[float, bool]:
        if not isinstance(continuation, str):  # a doc_to_target function
            continuation = continuation(self.task_dict[task][split][doc_id])
        visuals = self._visuals(doc_to_visual, task, split, doc_id) if doc_to_visual is not None else []
        messages, images, videos = self._message(context, visuals)
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        tokens = self.tokenizer(prompt + continuation)["input_ids"]
        length = len(tokens) - len(self.tokenizer(prompt)["input_ids"])  # the continuation's tokens
        if length < 1:
            raise ValueError(f"the continuation {continuation!r} adds no token to the prompt")
        inputs = self._inputs([prompt + continuation], images, videos)
        ids = inputs["input_ids"]
        labels = torch.full_like(ids, hf.IGNORE_INDEX)
        labels[:, -length:] = ids[:, -length:]
        start = time.perf_counter()
        with torch.inference_mode():
            if self.reducer is None:
                output, reductions = self.model(**inputs, **{hf.LABELS: labels}), per_sample([], 0.0, 1)
            else:
                with self.recorder.recording(), tr.apply(self.model, self.reducer) as session:
                    output = self.model(**inputs, **{hf.LABELS: labels})
                    reductions = per_sample(session.videos(), self.recorder.seconds, 1)
        greedy = bool((output.logits[0, -length - 1:-1].argmax(dim=-1) == ids[0, -length:]).all())
        if doc_id is not None:
            self.log.add({"task": task, "split": split, "doc_id": doc_id, "prompt_tokens": int(ids.shape[1]),
                          **reductions[0], "generate_seconds": time.perf_counter() - start, "rank": self.rank})
        return float(output.loss), greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the tokenreduce model implements generate_until and loglikelihood only")

    def _visuals(self, doc_to_visual: Any, task: str, split: str, doc_id: int) -> list[Any]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        if visuals is None:
            return []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        flat: list[Any] = []
        for item in visuals:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        return flat

    def _message(self, context: str, visuals: list[Any]) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
        """Chat message for one request, with its images and decoded video frames in order."""
        content: list[dict[str, Any]] = []
        images, videos = [], []
        for visual in visuals:
            if isinstance(visual, str) and visual.lower().endswith(VIDEO_SUFFIXES):
                videos.append(sample_video(visual, self.args.run.max_frames_num))
                content.append({"type": "video"})
            elif isinstance(visual, Image.Image):
                images.append(visual.convert("RGB"))
                content.append({"type": "image"})
            else:
                raise TypeError(f"tokenreduce model: unsupported visual {type(visual).__name__} "
                                f"({visual!r:.80}); expected a video path or a PIL image")
        for placeholder in PLACEHOLDERS:
            context = context.replace(placeholder, "")
        content.append({"type": "text", "text": context.strip()})
        messages = [{"role": "user", "content": content}]
        if self.args.run.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.args.run.system_prompt}]})
        return messages, images, videos

    def _inputs(self, prompts: list[str], images: list[Any], videos: list[Any]) -> Any:
        """The processor's batch for ``prompts`` with their images and ``(frames, metadata)`` videos, on the
        model's device, floating-point inputs in its dtype."""
        video_kwargs = {"videos": [frames for frames, _ in videos],
                        "video_metadata": [metadata for _, metadata in videos],
                        "do_sample_frames": False} if videos else {}
        inputs = self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt",
                                **video_kwargs).to(self.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.model.dtype)
        return inputs

    def _generation_kwargs(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        gen_kwargs = dict(gen_kwargs)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        do_sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.args.run.max_new_tokens)),
            "do_sample": do_sample,
            "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
        }
        if do_sample:
            kwargs["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                kwargs["top_p"] = float(gen_kwargs["top_p"])
        return kwargs, until

    def _generate(self, inputs: Any, kwargs: dict[str, Any], batch: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            if self.reducer is None:
                return self.model.generate(**inputs, pad_token_id=pad, **kwargs), per_sample([], 0.0, batch)
            with self.recorder.recording(), tr.apply(self.model, self.reducer) as session:
                output = self.model.generate(**inputs, pad_token_id=pad, **kwargs)
                reductions = per_sample(session.videos(), self.recorder.seconds, batch,
                                        rows_per_sample=kwargs["num_beams"])
            return output, reductions

    def _answer_batch(self, chunk: list[tuple[Any, ...]]) -> list[str]:
        """Generate the answers of one batch of requests and log one record per request."""
        contexts, gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
        prompts, images, videos = [], [], []  # videos: (frames, metadata) pairs
        for context, to_visual, doc_id, task, split in zip(contexts, doc_to_visual, doc_ids, tasks, splits):
            messages, sample_images, sample_videos = self._message(
                context, self._visuals(to_visual, task, split, doc_id))
            prompts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            images.extend(sample_images)
            videos.extend(sample_videos)
        inputs = self._inputs(prompts, images, videos)
        kwargs, until = self._generation_kwargs(gen_kwargs[0])
        start = time.perf_counter()
        output, reductions = self._generate(inputs, kwargs, len(prompts))
        seconds = time.perf_counter() - start
        prompt_length = inputs["input_ids"].shape[1]
        texts = self.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        answers = []
        for row, (text, doc_id, task, split, reduction) in enumerate(zip(texts, doc_ids, tasks, splits, reductions)):
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            answers.append(text.strip())
            self.log.add({
                "task": task, "split": split, "doc_id": doc_id,
                "prompt_tokens": int(inputs["attention_mask"][row].sum()),
                **reduction,
                "generate_seconds": seconds / len(prompts),
                "rank": self.rank,
            })
            self.cache_hook.add_partial("generate_until", (contexts[row], gen_kwargs[row]), answers[-1])
        return answers

    def generate_until(self, requests: list[Instance]) -> list[str]:
        def sort_key(args: tuple[Any, ...]) -> tuple[int, str]:
            return -len(args[0]), args[0]

        collator = lmms_utils.Collator([request.args for request in requests], sort_key, grouping=True)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="tokenreduce generating")
        answers: list[str] = []
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            try:
                answers.extend(self._answer_batch(chunk))
            except Exception as exc:
                raise self._failed(exc, chunk) from exc
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(answers)

    def _failed(self, exc: Exception, chunk: list[tuple[Any, ...]]) -> EvaluationFailed:
        """Log the failure of a batch, write its error record, and return the exception that stops the run."""
        _, _, _, doc_ids, tasks, splits = zip(*chunk)
        where = f"task {tasks[0]}, split {splits[0]}, doc_id(s) {list(doc_ids)}"
        message = f"tokenreduce: generation failed on rank {self.rank} ({where}): {type(exc).__name__}: {exc}"
        path = self.error_path()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"tokenreduce_error": {
                    **self.log.header, "rank": self.rank, "task": tasks[0], "split": splits[0],
                    "doc_ids": list(doc_ids), "error": type(exc).__name__, "message": str(exc),
                    "traceback": _traceback(exc),
                }}, default=str) + "\n", encoding="utf-8")
                message += f"; error record written to {path}"
            except OSError as unwritable:
                message += f"; the error record could not be written to {path} ({unwritable})"
        return _stop(message, exc)

    # ----- where the log goes --------------------------------------------------------------------------
    def log_path(self) -> Path | None:
        """``<output_path>/<model>/<date_id>_tokenreduce.jsonl`` beside lmms-eval's ``<date_id>_results.json``.

        ``reduction_log=`` overrides it (a ``.jsonl`` file, or a folder for ``<date>_tokenreduce.jsonl``).
        ``None`` when lmms-eval has no ``output_path`` (or the model runs outside ``simple_evaluate``).
        """
        running = _running_evaluation()
        tracker, date = running if running is not None else (None, None)
        stamp = date.replace(":", "-") if date else datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        target = self.args.run.reduction_log
        if target is not None:
            path = Path(target)
            return path if path.suffix == ".jsonl" else path / f"{stamp}_tokenreduce.jsonl"
        if tracker is None or not tracker.output_path:
            return None
        folder = tracker.general_config_tracker.model_name_sanitized
        return Path(tracker.output_path) / folder / f"{stamp}_tokenreduce.jsonl"

    def error_path(self) -> Path | None:
        """Where a failing rank writes its error record: ``<log stem>_error_rank<r>.json``."""
        path = self.log_path()
        return None if path is None else path.with_name(f"{path.stem}_error_rank{self.rank}.json")

    # ----- end of evaluation -------------------------------------------------------------------------
    def write_reduction_log(self) -> Path | None:
        """Gather the per-sample records of every rank; rank 0 writes them. Called by ``clean``."""
        records = self.log.gathered(gather_object if self._world_size > 1 else None)
        if self.rank != 0:
            return None
        summary = ReductionLog.summary(records)
        eval_logger.info(f"tokenreduce: {summary}")
        path = self.log_path()
        if path is None:
            eval_logger.warning("tokenreduce: lmms-eval has no output_path and no reduction_log=... was given; "
                                "per-sample kept-token counts are not written")
            return None
        path = self.log.write(path, records)
        eval_logger.info(f"tokenreduce: per-sample kept-token counts written to {path}")
        return path

    def clean(self) -> None:
        """lmms-eval calls this on every rank once all requests ran: write the log, then free memory."""
        try:
            self.write_reduction_log()
        except Exception as exc:
            raise _stop(f"tokenreduce: the kept-token log could not be written: {type(exc).__name__}: {exc}",
                        exc) from exc
        super().clean()
