"""Integrations of tokenreduce with evaluation frameworks.

``tokenreduce.integrations.lmms_eval`` registers the ``tokenreduce`` model with lmms-eval
(install with ``pip install 'tokenreduce[eval]'``). Nothing here is imported by ``import tokenreduce``.
"""
