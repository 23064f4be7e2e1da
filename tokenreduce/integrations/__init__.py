"""Integrations of tokenreduce with evaluation and serving frameworks.

``tokenreduce.integrations.lmms_eval`` registers the ``tokenreduce`` model with lmms-eval (install with
``pip install 'tokenreduce[eval]'``); ``tokenreduce.integrations.vllm_serving`` is the vLLM plugin
(``vllm.general_plugins`` entry point, docs/serving.md) and ``serving`` its engine-neutral half.
Nothing here is imported by ``import tokenreduce``.
"""
