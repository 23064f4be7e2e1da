"""Applies the CPU test-environment fixes in every Python process started with this folder on PYTHONPATH."""

import vllm_cpu_fixes

vllm_cpu_fixes.apply()
