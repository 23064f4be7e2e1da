"""Peak LM memory of an in-LLM reduction on a hybrid decoder (Qwen3.5), chunked against unchunked, for
docs/performance.md.

    python benchmarks/hybrid_chunked_prefill.py

A random Qwen3.5 built here from its config (no download): the released models' layout of three
Gated-DeltaNet layers for every full-attention layer, 8 layers of width 512, a 2-block vision tower,
one video of 16 x 24 x 24 LLM tokens (the prompt builders of tests/adapters). FastV at r = 0.3 reads layer 3's probe
(the first full-attention layer) and prunes before layer 4, so layers 0-3 see every token. Peak
tensor memory inside the language model's forward (the profiler's allocations, as ``tokenreduce
bench`` measures it; deterministic, one measurement each) for the full model, FastV with an
unchunked prefill and FastV with chunks of ``--chunk`` slots, and how far the chunked logits are
from the unchunked ones. The JSON goes to benchmarks/results/hybrid-chunked-prefill-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "adapters"), str(ROOT / "tests")]

import tiny_vlms as tm  # the tests' tiny-model and prompt builders
import transformers

import tokenreduce as tr
from tokenreduce.bench.end_to_end import _PeakMemory

WIDTH = dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=64, linear_value_head_dim=64)


def build_model() -> torch.nn.Module:
    text = dict(tm._qwen3_5_text(8, linear_per_full=3), **WIDTH)
    config = transformers.Qwen3_5Config(
        text_config=text, vision_config=dict(tm.QWEN_VISION, num_position_embeddings=64, out_hidden_size=512),
        **tm.QWEN_TOKENS)
    torch.manual_seed(0)
    return transformers.Qwen3_5ForConditionalGeneration(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="temporal patches of the video (default 16)")
    parser.add_argument("--chunk", type=int, default=256, help="prefill chunk of the chunked run (default 256)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "hybrid-chunked-prefill-cpu.json"))
    args = parser.parse_args()
    model = build_model()
    inputs, _ = tm.grid_thw_prompt("qwen3", [[("video", (args.frames, 24, 24))]])
    memory = _PeakMemory(model.model.language_model, torch.device("cpu"))
    runs = {}
    for label, chunk in (("full", None), ("fastv unchunked", None), (f"fastv chunks of {args.chunk}", args.chunk)):
        reducer = None if label == "full" else tr.build("fastv", ratio=0.3)

        def prefill(reducer=reducer, chunk=chunk):
            with torch.no_grad():
                if reducer is None:
                    return model(**inputs).logits[0, -1], {}, {}
                with tr.apply(model, reducer, prefill_chunk=chunk) as session:
                    logits = model(**inputs).logits[0, -1]
                return logits, session.layer_lengths, session.chunked_layers

        peak, (logits, lengths, chunked) = memory.measure(prefill)
        runs[label] = {"peak_bytes": peak, "layer_lengths": lengths, "chunked_layers": chunked, "logits": logits}
    full = runs["full"]["peak_bytes"]
    unchunked, chunked = runs["fastv unchunked"]["logits"], runs[f"fastv chunks of {args.chunk}"]["logits"]
    difference = float((unchunked - chunked).abs().max())
    for label, run in runs.items():
        print(f"{label:22s} peak {run['peak_bytes'] / 2**20:6.1f} MiB ({run['peak_bytes'] / full:.2f}x)  "
              f"layer lengths {run['layer_lengths'] or '-'}  chunked {run['chunked_layers'] or '-'}")
    print(f"chunked vs unchunked last-token logits: at most {difference:.3g} apart")
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "tokenreduce": tr.__version__},
              "sequence": int(inputs["input_ids"].shape[1]), "logit_difference": difference,
              "runs": {label: {k: v for k, v in run.items() if k != "logits"} for label, run in runs.items()}}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
