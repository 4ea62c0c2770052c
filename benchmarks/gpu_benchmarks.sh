#!/usr/bin/env bash
# The GPU figures of docs/speed.md in one go (about 6 minutes on one H100), for a lent or own GPU:
#   DATA=../shared/data bash benchmarks/gpu_benchmarks.sh [out_dir]
# 1. the training loop against a raw PyTorch loop (resnet50, densenet121 at 224 px, bf16, batch 128,
#    channels_last; lite0 at 64 px, batch 16, the study's own setting);
# 2. the study runner: a 50/100/200-image, 30-epoch grid sample with 1 worker, then 8 workers
#    (WORKERS="4 8 12" sweeps the count instead);
# 3. several seeds' steps batched into one with torch.func, against one model at a time (lite0, 64 px);
# 4. smallmed against fastai's fine_tune on the 50-image BreastMNIST task, where fastai is installed
#    (pip install -e '.[peer]'; about 2 more minutes).
set -u
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
OUT_DIR=${1:-runs/gpu}
DATA=${DATA:-../shared/data}
SEEDS=${SEEDS:-4}
WORKERS=${WORKERS:-8}
mkdir -p "$OUT_DIR"
quiet() { grep -v -E "^INFO|LOCAL_RANK|stopped: |^\[study\]|Restoring|Loaded model|test ROC AUC|balanced subset|^  (split|train|val|test) " ; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/device.txt"
python3 -c "import torch, lightning, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__)" | tee -a "$OUT_DIR/device.txt"
for model in resnet50 densenet121; do
  timeout 130 python3 benchmarks/loop_overhead.py --model $model --size 224 --batch 128 --images 2048 --epochs 2 \
    --repeats 2 --precision bf16-mixed --channels-last 2>&1 | quiet | tee -a "$OUT_DIR/loop.txt"
done
timeout 90 python3 benchmarks/loop_overhead.py --model tf_efficientnet_lite0 --size 64 --batch 16 --images 512 --epochs 3 \
  --repeats 2 2>&1 | quiet | tee -a "$OUT_DIR/loop.txt"
timeout 120 python3 benchmarks/study_speed.py --data "$DATA/kermany_target_B_bacterial_vs_viral_64.npz" --workers 1 --seeds 1 \
  2>&1 | quiet | tee "$OUT_DIR/study_1worker.txt"
timeout $((200 * $(wc -w <<<"$WORKERS"))) python3 benchmarks/study_speed.py --data "$DATA/kermany_target_B_bacterial_vs_viral_64.npz" \
  --workers $WORKERS --seeds "$SEEDS" 2>&1 | quiet | tee "$OUT_DIR/study_workers.txt"
timeout 120 python3 benchmarks/seed_batching.py --seeds 2 4 8 2>&1 | quiet | tee "$OUT_DIR/seed_batching.txt"
if python3 -c "import fastai" 2>/dev/null; then
  timeout 300 python3 benchmarks/vs_fastai.py --data "$DATA/breastmnist_28.npz" --seeds 0 1 2 3 4 2>&1 | quiet \
    | tee "$OUT_DIR/vs_fastai.txt"
else
  echo "fastai is not installed: vs_fastai.py skipped (pip install -e '.[peer]')" | tee "$OUT_DIR/vs_fastai.txt"
fi
