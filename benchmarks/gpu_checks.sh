#!/usr/bin/env bash
# The GPU checks of issues 5 and 3, in one run of under 10 minutes on one 80 GB card (H100/A100):
#   1. bf16 training and sampling of the `base` preset at 256x256 against the card's measured bf16 matmul rate
#      (target: training at >= 40% of it), NCHW activations (the GPU default): as palette trains by default (cuDNN's
#      algorithm search on), with --low-precision-norm (GroupNorm in bf16), and with the cuDNN search off;
#   2. `base` compiled (torch.compile) with --low-precision-norm, NCHW and channels_last: the fused norms and
#      activations;
#   3. the `paper` preset (552.8M parameters) training on one card with gradient checkpointing, with its peak memory;
#   4. the whole `palette train` path on the GPU (data loading, accelerate, bf16, micro-batches, checkpoints) and
#      `palette sample`;
#   5. with DEMO=1: the demo's tiny multi-task model trained on the GPU for a few minutes (time-limited), its sheets,
#      and the sampler benchmark of issue 3 on it (its weights come back for the README's pictures).
# Every stage has its own time limit, and results are written as they come, so a stage that overruns loses itself
# only. Usage: bash benchmarks/gpu_checks.sh [OUT_DIR]   (figures in OUT_DIR/*.json and OUT_DIR/gpu_checks.log)
# SMOKE=1 runs every stage on the CPU at toy sizes in a few minutes, to check the script before a GPU is lent.
# On a machine without diffusers (its samplers) and without palette installed, e.g. the lent device, carry their wheels
# (diffusers, importlib_metadata, lazy-importer) in .whl/ and run:
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=$PWD/src:/tmp/site
#   mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 -m palette "$@"\n' >/tmp/bin/palette; chmod +x /tmp/bin/palette
#   PATH=/tmp/bin:$PATH bash benchmarks/gpu_checks.sh $OUT
# First run (2026-11-26, H100): base at batch 32 ran out of memory without checkpointing, hence batch 16 here; the
# figures are in benchmarks/results/gpu/ (channels_last and fp32 were measured there and are not repeated).
set -uo pipefail
out="${1:-${OUT:-gpu-checks}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
exec > >(tee "$out/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1

if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu; base=tiny; paper=tiny; secs=1; batch=4; demo_minutes=0.2; images=2; steps="20 2"
    train_preset=tiny; demo_batch=8; bench_timeout=120; workers=2; samplers_timeout=300; compile_timeout=300
else
    device=cuda; base=base; paper=paper; secs=12; batch=16; demo_minutes=3.5; images=32; steps="1000 100 20 10"
    train_preset=base; demo_batch=128; bench_timeout=75; workers=12; samplers_timeout=110; compile_timeout=200
fi

stage() { echo; echo "=== $1 ($(date +%T))"; }
stage environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

stage "1. bench: $base bf16 NCHW (cuDNN search on, the default; with bf16 GroupNorm; cuDNN search off)"
timeout $bench_timeout palette bench --preset $base --device $device --mixed-precision bf16 --batch-size $batch \
    --seconds $secs --json "$out/base_bf16.json"
timeout $bench_timeout palette bench --preset $base --device $device --mixed-precision bf16 --batch-size $batch \
    --low-precision-norm --seconds $secs --json "$out/base_bf16_low_precision_norm.json"
timeout $bench_timeout palette bench --preset $base --device $device --mixed-precision bf16 --batch-size $batch \
    --seconds $((secs / 2 + 1)) --json "$out/base_bf16_no_cudnn_search.json" train.cudnn_benchmark=false

stage "2. bench: $base bf16 compiled, with bf16 GroupNorm, NCHW and channels_last"
timeout $compile_timeout palette bench --preset $base --device $device --mixed-precision bf16 --batch-size $batch \
    --low-precision-norm --compile --seconds $((secs / 2 + 1)) --json "$out/base_bf16_low_precision_norm_compiled.json"
# compiled, GroupNorm is inductor's own kernel, which need not make channels_last tensors contiguous as CUDA's does
timeout $compile_timeout palette bench --preset $base --device $device --mixed-precision bf16 --batch-size $batch \
    --low-precision-norm --compile --channels-last --seconds $((secs / 2 + 1)) \
    --json "$out/base_bf16_low_precision_norm_compiled_channels_last.json"

stage "3. bench: $paper bf16 with gradient checkpointing"
timeout $bench_timeout palette bench --preset $paper --device $device --mixed-precision bf16 --gradient-checkpointing \
    --batch-size $batch --seconds $((secs / 2 + 1)) --json "$out/paper_bf16_ckpt.json"

stage "4. palette train and sample"
python3 -c "from palette.demo import write_photos; import sys; write_photos(__import__('pathlib').Path(sys.argv[1]))" \
    "$work/photos"
timeout 120 palette train --task inpainting --data "$work/photos/train" --out "$work/run" --preset $train_preset \
    --steps 30 --batch-size $((2 * batch)) --micro-batch-size $batch --mixed-precision bf16 --device $device \
    --no-progress train.log_every=10 train.checkpoint_every=30 train.sample_every=0 data.num_workers=4 \
    && timeout 60 palette sample --checkpoint "$work/run" --task inpainting --mask center \
        --input "$work/photos/held_out" --sampler dpmpp-2m --steps 20 --out "$work/samples" --device $device \
        --no-progress && ls -l "$work/samples"

[ "${DEMO:-0}" = 1 ] || { stage "gpu checks done (DEMO=1 adds the demo model and the sampler benchmark)"; ls -l "$out"; exit 0; }

stage "5. the demo model, trained for $demo_minutes minutes"
timeout $(python3 -c "print(int($demo_minutes * 60 + 90))") palette demo --out "$work/demo" --steps 1000000 \
    --sample-steps 250 --device $device --no-progress \
    train.batch_size=$demo_batch train.time_limit_minutes=$demo_minutes data.num_workers=$workers \
    train.log_every=500
cp "$work/demo/run/checkpoints/$(cat "$work/demo/run/checkpoints/latest")/ema.safetensors" "$out/demo_ema.safetensors" \
    && ls -l "$out/demo_ema.safetensors"
(cd "$work/demo" && tar cf "$out/demo_sheets.tar" sheet_*.png run/config.yaml run/logs) 2>/dev/null

stage "6. samplers on the demo model"
timeout $samplers_timeout python3 benchmarks/samplers.py --checkpoint "$work/demo/run" \
    --data "$work/photos/held_out" --images $images --device $device --steps $steps --schedules inference training \
    --training-steps 20 --out "$work/samplers"
(cd "$work" && tar cf "$out/samplers.tar" samplers) 2>/dev/null
stage "gpu checks done"
ls -l "$out"
