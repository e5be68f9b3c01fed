#!/usr/bin/env bash
# The GPU checks of issue 5, in one run of under 10 minutes on one 80 GB card (H100/A100):
#   1. bf16 training and sampling of the `base` preset at 256x256 against the card's measured bf16 matmul rate
#      (target: training at >= 40% of it);
#   2. the `paper` preset (552.8M parameters) training on one card with gradient checkpointing, with its peak memory;
#   3. the whole `palette train` path on the GPU (data loading, accelerate, bf16, checkpoints) for a few steps.
# Usage: bash benchmarks/gpu_checks.sh [OUT_DIR]   (figures in OUT_DIR/*.json and OUT_DIR/gpu_checks.log)
set -euo pipefail
out="${1:-${OUT:-gpu-checks}}"
mkdir -p "$out"
exec > >(tee "$out/gpu_checks.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

palette bench --preset base --mixed-precision bf16 --batch-size 32 --seconds 40 --json "$out/base_bf16.json"
palette bench --preset base --batch-size 32 --seconds 20 --json "$out/base_fp32.json"
palette bench --preset paper --mixed-precision bf16 --gradient-checkpointing --batch-size 16 --seconds 40 \
    --json "$out/paper_bf16_ckpt.json"

python - "$out/photos" <<'EOF'
import sys, pathlib, skimage.data
from PIL import Image
folder = pathlib.Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
    Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
EOF
palette train --task inpainting --data "$out/photos" --out "$out/run" --preset base --steps 30 --batch-size 32 \
    --mixed-precision bf16 --no-progress train.log_every=10 train.checkpoint_every=30 train.sample_every=0 \
    data.num_workers=4
palette sample --checkpoint "$out/run" --task inpainting --mask center --input "$out/photos" --sampler dpmpp-2m \
    --steps 20 --out "$out/samples" --no-progress
echo "gpu checks done"
