#!/usr/bin/env bash
# `make demo`: the whole toolkit offline on the synthetic shapes set and tiny models.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_DIR:-demo_out}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

echo "== 1. shapes dataset -> $OUT/shapes"
$PY -m captioning.shapes --out "$OUT/shapes"

echo "== 2. tiny random SmolVLM (idefics3) and BLIP models -> $OUT/models"
$PY -m captioning.factory --family idefics3 --size tiny --out "$OUT/models/tiny-smolvlm"
$PY -m captioning.factory --family blip --size tiny --out "$OUT/models/tiny-blip"

echo "== 3. captions for a few shapes test images (untrained models: expect noise)"
IMAGES=$(ls "$OUT"/shapes/images/test/*.png | head -3)
for m in tiny-smolvlm tiny-blip; do
  echo "-- $m"
  $PY -m captioning.caption --model "$OUT/models/$m" --max-new-tokens 12 $IMAGES
done
