#!/usr/bin/env bash
# The GSM8K-format run of a fresh LLaDA-architecture model: prepare -> supervised base -> FPO in the release's
# regime with and without DiPOD, the two RL runs side by side on one device, each stopped after RL_SECONDS
# (the loop finishes its step, checkpoints and writes its summary).
#
#   bash experiments/gpu/run.sh OUT SIZE DEVICE SFT_STEPS RL_SECONDS
#   bash experiments/gpu/run.sh runs/gpu 1b cuda 400 240     # the device run (RESULTS.md §0f)
#   bash experiments/gpu/run.sh /tmp/gpu tiny cpu 20 60      # the same chain at CPU size
set -euo pipefail
out=$1 size=$2 device=$3 sft_steps=$4 rl_seconds=$5
python=${PYTHON:-python3}
here=$(dirname "$0")
data=(language.data.train_path="$out/data/train.jsonl" language.data.eval_path="$out/data/test.jsonl"
      train.device="$device")

$python "$here/prepare.py" "$out" --size "$size"
timeout "${SFT_SECONDS:-100000}" $python -m dipod.cli sft "$here/gsm8k_sft.yaml" --out "$out/sft" --quiet \
  --set language.model.path="$out/model" language.sft.steps="$sft_steps" "${data[@]}" || true
base="$out/sft"
[ -f "$base/config.json" ] || { echo "no supervised base in $base: RL starts from the fresh model"; base="$out/model"; }
for variant in release_fpo release_fpo_dipod; do
  beta=0.0; [ "$variant" = release_fpo_dipod ] && beta=0.05
  timeout "$rl_seconds" $python -m dipod.cli train "$here/gsm8k_release.yaml" --out "$out/$variant" \
    --quiet --set language.model.path="$base" objective.dipod_beta=$beta "${data[@]}" > "$out/$variant.log" 2>&1 &
done
wait || true
