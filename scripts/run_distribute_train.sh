#!/usr/bin/env bash
# Data-parallel training with msrun (MCCL on CPU, NCCL on GPU, HCCL on Ascend).
# usage: bash scripts/run_distribute_train.sh DEVICE_NUM DATASET_PATH [launcher and train.py options]
#   several hosts: add --worker_num TOTAL --master_addr HOST0 --node_rank THIS_HOST on every host
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash $0 DEVICE_NUM DATASET_PATH [--worker_num N --master_addr A --node_rank R] [train.py options]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
exec python -m src.launch "$@"
