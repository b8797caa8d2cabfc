#!/usr/bin/env bash
# The whole package in a few minutes on a laptop CPU, with no download:
#   synthetic Pets-layout sample set -> MindRecord -> float training -> int8 calibration and
#   fine-tuning -> eval of both (result lines, per-class reports) -> int8 report -> MINDIR export.
# usage: bash scripts/run_quickstart.sh [--data_root PETS_DIR] [--output_dir DIR] [--device_target CPU|GPU|Ascend]
#   --data_root runs the same steps on a real Oxford-IIIT Pet folder (images/, annotations/).
set -euo pipefail
cd "$(dirname "$0")/.."

data_root=""
output_dir="quickstart_output"
device_target="CPU"
while [ $# -gt 0 ]; do
  case "$1" in
    --data_root) data_root=$2; shift 2 ;;
    --output_dir) output_dir=$2; shift 2 ;;
    --device_target) device_target=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

export GLOG_v=3  # MindSpore's C++ warnings would bury the progress lines
step() { echo; echo "=== [$1/7] $2"; }
num_classes=37
image_size=64
common=(--device_target "$device_target" --width 1.0 --image_size "$image_size" --batch_size 16 --num_workers 2)

rm -rf "$output_dir"
mkdir -p "$output_dir"
if [ -z "$data_root" ]; then
  step 1 "making a SYNTHETIC sample set (coloured stripes, not real pets) in $output_dir/sample_pets"
  data_root="$output_dir/sample_pets"
  num_classes=6
  python -m src.sample_data --output_dir "$data_root" --num_classes "$num_classes"
else
  step 1 "using the Pets folder $data_root"
fi

step 2 "converting to MindRecord"
python -m src.dataset --data_root "$data_root" --output_dir "$output_dir/mindrecord"
train="$output_dir/mindrecord/train.mindrecord"
test="$output_dir/mindrecord/test.mindrecord"

step 3 "training float GhostNet 1.0x briefly at ${image_size}px"
python train.py --dataset_path "$train" --eval_dataset_path "$test" --output_dir "$output_dir/float" \
  --num_classes "$num_classes" --epoch_size 8 --warmup_epochs 1 --lr 1.6 --log_every 50 "${common[@]}"

step 4 "int8: calibrating, then fine-tuning 1 epoch"
python train.py --quant --pretrained "$output_dir/float/ghostnet-final.ckpt" --dataset_path "$train" \
  --eval_dataset_path "$test" --output_dir "$output_dir/int8" --num_classes "$num_classes" \
  --epoch_size 1 --calib_batches 4 --quant_bn_freeze_epoch 0 --quant_observer_freeze_epoch 0 --log_every 50 "${common[@]}"

step 5 "evaluating float and int8 (per-class reports in $output_dir/report)"
for run in float/ghostnet-final int8/ghostnet-int8; do
  python eval.py --dataset_path "$test" --checkpoint_path "$output_dir/$run.ckpt" --num_classes "$num_classes" \
    --image_size "$image_size" --device_target "$device_target" --report_dir "$output_dir/report/${run%%/*}" 2>/dev/null
done

step 6 "int8 against float, layer by layer (worst first)"
python quant_report.py --float_checkpoint "$output_dir/float/ghostnet-final.ckpt" \
  --int8_checkpoint "$output_dir/int8/ghostnet-int8.ckpt" --dataset_path "$test" --batches 1 --top 5 \
  --num_classes "$num_classes" --image_size "$image_size" --output_dir "$output_dir/report" \
  --device_target "$device_target" 2>/dev/null

step 7 "exporting MINDIR"
for name in float/ghostnet-final int8/ghostnet-int8; do
  python export.py --checkpoint_path "$output_dir/$name.ckpt" --file_format MINDIR \
    --file_name "$output_dir/export/$(basename "$name")" --num_classes "$num_classes" \
    --image_size "$image_size" --device_target "$device_target"
done
echo
echo "done: checkpoints in $output_dir/float and $output_dir/int8, models in $output_dir/export"
for picture in float/history.png report/float/confusion.png report/int8/confusion.png report/quant_report.png; do
  if [ -f "$output_dir/$picture" ]; then echo "picture: $output_dir/$picture"; fi
done
[ -f "$output_dir/float/history.png" ] || echo "(no pictures: pip install -r requirements-plots.txt)"
