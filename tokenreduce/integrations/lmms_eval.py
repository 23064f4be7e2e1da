"""lmms-eval plugin: the ``tokenreduce`` model, registered through lmms-eval's model entry points.

lmms-eval 0.7 discovers external models from the ``lmms_eval.models`` entry-point group; this
package declares ``tokenreduce = "tokenreduce.integrations.lmms_eval:model_manifest"`` there, so
after ``pip install 'tokenreduce[eval]'``::

    python -m lmms_eval --model tokenreduce \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,strategy=st_simdiff,ratio=0.3 \\
        --tasks videomme --output_path ./logs

See docs/evaluation.md for the model arguments and data-parallel runs.
"""

from __future__ import annotations

from tokenreduce.errors import MissingDependencyError

MODEL_NAME = "tokenreduce"
MODEL_CLASS_PATH = "tokenreduce.integrations.lmms_eval_model.TokenReduceLMM"

try:
    from lmms_eval.models.registry_v2 import ModelManifest
except ImportError as exc:  # lmms-eval (or one of the runtime packages it imports) is missing
    raise MissingDependencyError(
        f"the lmms-eval integration needs lmms-eval: pip install 'tokenreduce[eval]' ({exc})"
    ) from exc


def model_manifest() -> ModelManifest:
    """The entry-point payload: lmms-eval imports the model class only when ``--model tokenreduce`` is used."""
    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)


def model_class() -> type:
    """The lmms-eval model class (imports transformers, accelerate and lmms-eval's model API)."""
    from tokenreduce.integrations.lmms_eval_model import TokenReduceLMM

    return TokenReduceLMM


__all__ = ["MODEL_CLASS_PATH", "MODEL_NAME", "model_class", "model_manifest"]
