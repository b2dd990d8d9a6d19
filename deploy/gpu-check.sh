#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on one H100/H200): every CUDA path of cem against its CPU result
# -- NCCL DDP on the GPUs present (torchrun), bf16 autocast + channels_last in the MoCoV2 step,
# torch.compile of the encoders, the GPU augmentation vs the CPU kernel, filter scoring, orthoplane
# inference -- and the MoCoV2 ResNet50 224^2 training images/s (goal >= 3,000 on one H100/H200).
# Without a GPU the same checks run their CPU fallbacks at tiny sizes and say that the GPU checks
# were skipped. Needs nothing from outside the machine: real EM from ../shared/data/em (or
# $CEM_EM_DATA) when present, else synthetic images. The checks and their tolerances are described
# in cem_pipeline/bench/gpu.py.
#   bash deploy/gpu-check.sh [--mode auto|gpu|cpu] [--only augment,ddp,...] [--json OUT.json] [--budget S]
# Exit status: 0 when every check passed, 1 when one failed, 2 when the environment is missing.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CEM_VENV:-$repo/.venv}
python=$venv/bin/python
if [ ! -x "$python" ]; then
  python=$(command -v python3 || true)
  if [ -z "$python" ] || ! "$python" -c "import torch, cem_pipeline" 2>/dev/null; then
    echo "gpu-check.sh: no environment with torch and cem ($venv missing); run deploy/setup.sh first" >&2
    exit 2
  fi
fi
cd "$repo"
export PYTHONUNBUFFERED=1
# offline: nothing may be fetched (no pretrained weights, no hub), and collectives stay on loopback
export HF_HUB_OFFLINE=1
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/cem-gpu-check-inductor}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu-check: GPU /'
fi
exec "$python" -m cem_pipeline.bench.gpu check "$@"
