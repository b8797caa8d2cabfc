#!/usr/bin/env bash
# One-process training.
# usage: bash scripts/run_standalone_train.sh DATASET_PATH [train.py options]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash $0 DATASET_PATH [train.py options]" >&2
  exit 2
fi
dataset_path=$1
shift
cd "$(dirname "$0")/.."
exec python train.py --dataset_path "$dataset_path" "$@"
