#!/usr/bin/env bash
# `make demo`: the whole toolkit offline on the synthetic shapes set with demo-size models
# (a few MB, trained from random weights on 2 CPU cores):
# data -> random SmolVLM-architecture model -> base fine-tune -> eval (COCO metrics + scene
# accuracy) -> LoRA style fine-tune -> eval in its style -> release (merged, with its model
# card) -> serve the Space, base vs fine-tune (SERVE=0 skips the server).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${DEMO_DIR:-demo_out}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
step() { printf '\n== %s\n' "$*"; }

step "1. shapes dataset -> $OUT/shapes (20000 training images; 200 held-out test images)"
$PY -m synthetic.shapes --out "$OUT/shapes" --train 20000 --val 100 --test 200
# sed reads everything: head would exit early, SIGPIPE the writer, and pipefail end the demo
IMAGES=$(printf '%s\n' "$OUT"/shapes/images/test/*.png | sed -n 1,4p)

step "2. a random demo-size SmolVLM-architecture model: untrained captions are noise"
$PY -m synthetic.factory --family idefics3 --size demo --out "$OUT/models/demo-smolvlm"
$PY -m captioning.caption --model "$OUT/models/demo-smolvlm" --max-new-tokens 12 $IMAGES

step "3. base fine-tune on shapes (full fine-tune from random weights, about 5 minutes on 2 cores)"
$PY -m training.train --config training/recipes/shapes-demo.yaml --data.source "$OUT/shapes" \
  --output-dir "$OUT/runs/shapes-demo" --output.overwrite

step "4. evaluate it on the held-out test split: COCO metrics and scene accuracy (are the named objects right?)"
$PY eval/run.py generate --model "$OUT/runs/shapes-demo" --dataset "$OUT/shapes" --split test \
  --out "$OUT/eval/shapes-demo" --overwrite

step "5. LoRA style fine-tune ('linguistic errors' captions) on top of it"
$PY -m training.train --config training/recipes/shapes-demo-style.yaml --data.source "$OUT/shapes" \
  --model.name_or_path "$OUT/runs/shapes-demo" --output-dir "$OUT/runs/shapes-demo-style" --output.overwrite

step "6. evaluate the style fine-tune against the test references rewritten in its style"
# Scored against plain references its BLEU-4 is ~0 by design; against the same references in its
# style (recorded in metrics.json) it shows how well it learned. Scene accuracy reads both styles.
$PY eval/run.py generate --model "$OUT/runs/shapes-demo-style" --dataset "$OUT/shapes" --split test \
  --max-new-tokens 40 --caption-transform linguistic_errors --out "$OUT/eval/shapes-demo-style" --overwrite

step "7. release: merge the adapter, check the merge, render the model card, write the repo layout locally"
$PY -m release push --repo-id demo/shapes-demo-style --adapter "$OUT/runs/shapes-demo-style" --merge \
  --eval "$OUT/eval/shapes-demo-style" --to-dir "$OUT/release/shapes-demo-style" --force

step "8. test images: a reference, the base fine-tune's and the released style model's captions"
$PY scripts/demo_show.py "$OUT/shapes" --images 4 "base fine-tune=$OUT/eval/shapes-demo" \
  "style fine-tune (released)=$OUT/eval/shapes-demo-style"

if [ "${SERVE:-1}" = "1" ]; then
  step "9. the Space: base vs fine-tune on http://127.0.0.1:${PORT:-7860}/ (Ctrl-C stops)"
  exec $PY space/app.py --models "$OUT/release/shapes-demo-style;name=Style fine-tune,$OUT/runs/shapes-demo;name=Base" \
    --host 127.0.0.1 --port "${PORT:-7860}"
fi
echo "done (SERVE=0: not serving the Space)"
