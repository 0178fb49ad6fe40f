#!/usr/bin/env bash
# The checks to run on a machine with a CUDA GPU (never part of `make test`): every test of the
# paths that run on CUDA -- extraction, SAE training (float32 and bfloat16) with the TopK kernels, heatmaps, steering --
# with --device auto picking the GPU, then the GPU benchmarks whose tables go in
# docs/benchmarks.md ("GPU"). Usage: scripts/gpu_check.sh [OUT_DIR]   (PYTHON=... to choose the interpreter)
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
out=${1:-gpu-check}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
"$python" -c "import torch; print('card:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" | tee "$out/card.txt"
"$python" -m pytest -q -x tests/store tests/sae tests/explain tests/interventions 2>&1 | tee "$out/tests.txt"
"$python" benchmarks/sae_training.py --device cuda --steps 200 2>&1 | tee "$out/sae_training.txt"
"$python" benchmarks/sae_training.py --device cuda --steps 200 --precision bfloat16 2>&1 | tee "$out/sae_training_bf16.txt"
"$python" benchmarks/extraction.py --device cuda --images 512 --batch-size 64 2>&1 | tee "$out/extraction.txt"
