#!/usr/bin/env bash
# How the shipped tiny pair was made: the exact sequence of `mdlm train` calls (CPU, one thread per model,
# both models trained side by side on a shared 2-core machine), then `mdlm ship`.
# The runs were interrupted to change their planned length (the warm restarts of the cosine schedule
# below); `--stop-at` replays those interruptions, and resumed training is bit-identical on CPU, so this
# script reproduces the weights.
#   bash checkpoints/tiny/train.sh [WORK_DIR]     (default checkpoints-work/tiny; about 4.5 CPU-hours)
set -euo pipefail
W=${1:-checkpoints-work/tiny}
HEAVY_STOP=${HEAVY_STOP:-4400}   # the step the heavy run reached (see manifest.json)
LIGHT_STOP=${LIGHT_STOP:-1800}   # the light model is shipped at step 1800 (see README.md: why not 4400)
export OMP_NUM_THREADS=1
T="mdlm train --profile tiny --retrain"

$T --model heavy --out "$W/heavy" --steps 1200 --stop-at 100
$T --model heavy --out "$W/heavy" --resume --steps 700 --stop-at 400
$T --model heavy --out "$W/heavy" --resume --steps 1800
$T --model heavy --out "$W/heavy" --resume --steps 4400 --stop-at "$HEAVY_STOP"

$T --model light --out "$W/light" --steps 1200 --stop-at 300
$T --model light --out "$W/light" --resume --steps 700
$T --model light --out "$W/light" --resume --steps 1800 --stop-at "$LIGHT_STOP"
# The equal-token control (not shipped; its curve is equal-tokens-light.jsonl):
#   cp -r "$W/light" "$W/light-4400" && $T --model light --out "$W/light-4400" --resume --steps 4400

mdlm ship --profile tiny --from "$W" --command "bash checkpoints/tiny/train.sh (HEAVY_STOP=$HEAVY_STOP LIGHT_STOP=$LIGHT_STOP)" \
  --notes "CPU (2-core AMD EPYC, shared), 1 thread per model, fp32; EMA weights stored as bf16"
