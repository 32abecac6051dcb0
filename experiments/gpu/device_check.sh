#!/usr/bin/env bash
# What one lent GPU machine runs (RESULTS.md §0f): the CUDA tests, then experiments/gpu/run.sh at SIZE (default
# 1b), with the GPU's memory and load sampled every 5 s; results packed into $OUT. Needs pydantic as wheels in
# .whl/ where the GPU machine has none and no network, fetched beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
# Run from the repository root:  bash experiments/gpu/device_check.sh SFT_STEPS SFT_SECONDS RL_SECONDS [TESTS] [SIZE]
#   e.g. the release's horizon at 200M parameters:  bash experiments/gpu/device_check.sh 1500 120 420 no 200m
set -uo pipefail
sft_steps=${1:-600} sft_seconds=${2:-180} rl_seconds=${3:-270} tests=${4:-yes} size=${5:-1b}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/smi.csv" 2>&1 &
[ "$tests" = yes ] && timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/pytest.txt"
start=$(date +%s)
SFT_SECONDS=$sft_seconds bash experiments/gpu/run.sh /tmp/gpu "$size" cuda "$sft_steps" "$rl_seconds" 2>&1 | tee "$OUT/run.log"
echo "chain seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/run.log"
tar czf "$OUT/runs.tar.gz" -C /tmp/gpu --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' \
  --exclude='model' sft release_fpo release_fpo_dipod release_fpo.log release_fpo_dipod.log 2>&1
ls -la /tmp/gpu "$OUT"
