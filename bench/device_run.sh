#!/usr/bin/env bash
# The one GPU run behind docs/benchmarks.md's GPU table: the paper-scale throughput of bench/gpu.py
# (gpt2-large and GPT-2 124M, eager and torch.compile) and the tiny preset run on the GPU, which
# exercises every CUDA code path of the loops (bf16 autocast, fused AdamW, CUDA generators).
#   OUT=gpu_results bash bench/device_run.sh        # from the repository root, on a CUDA machine
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -d .tiktoken-cache ]; then export TIKTOKEN_CACHE_DIR="$PWD/.tiktoken-cache"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 $PY bench/gpu.py --json "$OUT/gpt2_large.json" > "$OUT/gpt2_large.log" 2>&1
echo "gpt2-large eager: $?"
timeout 60 $PY bench/gpu.py --size gpt2 --micro_batch 32 --sft_batch 32 --estimate gpt2 \
  --json "$OUT/gpt2.json" > "$OUT/gpt2.log" 2>&1
echo "gpt2 eager: $?"
timeout 120 $PY bench/gpu.py --compile --json "$OUT/gpt2_large_compile.json" \
  > "$OUT/gpt2_large_compile.log" 2>&1
echo "gpt2-large compile: $?"
timeout 180 $PY frontier.py --preset tiny --device cuda --out_dir /tmp/tiny_cuda \
  > "$OUT/tiny_cuda.log" 2>&1
echo "tiny preset on cuda: $?"
cp /tmp/tiny_cuda/frontier.jsonl "$OUT/tiny_cuda_frontier.jsonl" 2>/dev/null
tail -c 3000 "$OUT/tiny_cuda.log"
