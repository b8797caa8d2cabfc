#!/usr/bin/env bash
# Evaluate a checkpoint.
# usage: bash scripts/run_eval.sh DATASET_PATH CHECKPOINT_PATH [eval.py options]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash $0 DATASET_PATH CHECKPOINT_PATH [eval.py options]" >&2
  exit 2
fi
dataset_path=$1
checkpoint_path=$2
shift 2
cd "$(dirname "$0")/.."
exec python eval.py --dataset_path "$dataset_path" --checkpoint_path "$checkpoint_path" "$@"
