#!/usr/bin/env bash
# One command for a CUDA machine: install what is missing (the `gpu` extra: faiss on the GPU), run the tests marked
# `gpu`, then the encode, index and ingest benchmarks on CUDA, printing their tables. Each step has a time limit
# so that the whole check ends within 8 minutes. Run from anywhere: scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export LBSEARCH_CACHE="${LBSEARCH_CACHE:-$(mktemp -d)}"  # auto measures afresh on this machine
started=$SECONDS
step() { echo; echo "== $1 ($((SECONDS - started)) s in)"; }

python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || {
  echo "no CUDA device visible to torch (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1)); nothing to check" >&2
  exit 1
}

step "install"
# Once installed, not again: pip would bring faiss-cpu back beside faiss-gpu (both are the `faiss` module).
if ! python3 -c 'import importlib.metadata as m; [m.version(p) for p in ("lbsearch", "pytest", "torchao")]' 2>/dev/null; then
  python3 -m pip install -q -e ".[test,bench]"
fi
if ! python3 -c 'import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)' 2>/dev/null; then
  # faiss-cpu and faiss-gpu both provide the `faiss` module: swap one for the other, as the gpu extra says.
  gpu_extra=$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))')
  python3 -m pip uninstall -q -y faiss-cpu
  python3 -m pip install -q $gpu_extra
fi
python3 -c 'import faiss, torch; print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; faiss {faiss.__version__} sees {faiss.get_num_gpus()} GPU(s)")'

status=0
step "pytest -m gpu"
timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider || status=$?

step "benchmarks/encode.py on CUDA (ViT-L shapes, fp32 / fp16 / bf16)"
timeout 90 python3 -m benchmarks.encode --device cuda --batches 8 --min-seconds 1 || status=$?

step "benchmarks/index.py (FAISS builds and searches on the GPU)"
timeout 90 python3 -m benchmarks.index --sizes 100000 || status=$?

step "benchmarks/ingest.py on CUDA (ViT-L: official fp32 loop vs the pipeline at auto)"
timeout 120 python3 -m benchmarks.ingest --device cuda --sizes large --large-files 25 --repeats 1 --threads 4 \
  --workers 8 --precisions fp32 auto || status=$?

echo; echo "gpu check finished in $((SECONDS - started)) s, exit status $status"
exit $status
