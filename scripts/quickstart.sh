#!/usr/bin/env bash
# Set up (idempotent), pretrain two source models on Fashion-MNIST classes 0-4 (cached), then search on classes 5-9:
# which model, freeze share, head/backbone learning rates, data fraction and pretrained-vs-scratch, with ASHA.
# Offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
dataset=fashion-mnist-split
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${TLSEARCH_FASHION_MNIST_DIR:-}" ]; then
  echo "quickstart: Fashion-MNIST is not installed (Debian package dataset-fashion-mnist); using digits-split"
  dataset=digits-split
fi
data_dir=(); [ -n "${TLSEARCH_FASHION_MNIST_DIR:-}" ] && data_dir=(--data-dir "$TLSEARCH_FASHION_MNIST_DIR")
models=(resnet10t mobilenetv3_small_050)  # a ResNet and a small MobileNet: both fast on 2 CPUs at 32 px
weights=()
for model in "${models[@]}"; do
  file=results/weights/${model}-${dataset}-source.safetensors
  .venv/bin/tlsearch pretrain --dataset "$dataset" "${data_dir[@]}" --model "$model" --image-size 32 --epochs 1 \
    --out "$file"
  weights+=("$model=$file")
done
name="quickstart-$(date +%Y%m%d-%H%M%S)"
.venv/bin/tlsearch run --dataset "$dataset" "${data_dir[@]}" --model "$(IFS=,; echo "${models[*]}")" \
  --weights "$(IFS=,; echo "${weights[*]}")" --trials 12 --max-epochs 6 --grace-period 1 --reduction-factor 2 \
  --data-fraction 0.01,0.03,0.1 --name "$name" "$@"
.venv/bin/tlsearch report results --experiment "$name"
echo "quickstart: for intervals and verdicts, confirm the chosen configurations:"
echo "  .venv/bin/tlsearch confirm results --experiment $name --repeats 3 && .venv/bin/tlsearch report results"
