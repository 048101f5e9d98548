#!/usr/bin/env bash
# The Meta-World example end to end (docs/environments.md, "Meta-World"): record the adapter's
# scripted experts, fine-tune the shipped default model on them (its word vocabulary extended by
# the new verbs and objects), export a model directory and benchmark it through the guidance loop
# next to the oracle, on held-out seeds. Each step is one ordinary command; re-running skips the
# recording and resumes training from the latest checkpoint.
#
# Usage (repository root, after `bash scripts/mujoco_extra.sh`):
#   bash examples/metaworld/finetune.sh
# Settings (environment): OUT (runs/metaworld), EPISODES per task (30), NT_STEPS (200),
# DIDA_STEPS (0: no DiDA stage, the export decodes subgoal images next-token by next-token),
# BENCH_EPISODES per task (10), WORKERS (1).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=.   # `examples` importable in every process, bench workers included
M=examples.metaworld.metaworld_guidance
TASKS=("$M:make_pick_place" "$M:make_drawer_open" "$M:make_button_press")
OUT="${OUT:-runs/metaworld}"
EPISODES="${EPISODES:-30}"
NT_STEPS="${NT_STEPS:-200}"
DIDA_STEPS="${DIDA_STEPS:-0}"
BENCH_EPISODES="${BENCH_EPISODES:-10}"
WORKERS="${WORKERS:-1}"
SHIPPED=model_runtime/default_model
EG=.venv/bin/emu-guide

# 1. Record: each task's ground-truth plan through execute_skill, every env step a frame (TRAIN seeds).
if [ ! -f "$OUT/data/meta/info.json" ]; then
  $EG record --env "${TASKS[@]}" --episodes "$EPISODES" --resolution 96 --out "$OUT/data" --no-progress
fi

# 2. Next-token fine-tune from the shipped model: same vision tokenizer, vocabulary extended.
$EG train --config configs/train/next_token.yaml --no-progress name=mw_next_token checkpoint.dir="$OUT/train/next_token" \
  data.path="$OUT/data" tokenizer="$SHIPPED/vision_tokenizer" init_from="$SHIPPED" data.new_words=extend \
  optim.max_steps="$NT_STEPS" optim.warmup_steps=30 optim.lr=5.0e-4 eval.every="$NT_STEPS" checkpoint.every=100
NT=$(ls -d "$OUT"/train/next_token/checkpoints/step-* | tail -1)

# 3. Optional DiDA adaptation (parallel subgoal images, as the shipped model decodes them).
LM="$NT"
if [ "$DIDA_STEPS" -gt 0 ]; then
  $EG train --config configs/train/dida.yaml --no-progress name=mw_dida checkpoint.dir="$OUT/train/dida" \
    data.path="$OUT/data" tokenizer="$SHIPPED/vision_tokenizer" init_from="$NT" \
    optim.max_steps="$DIDA_STEPS" optim.warmup_steps=10 optim.lr=2.0e-4 dida.next_token_loss_weight=2.0 \
    eval.every="$DIDA_STEPS" checkpoint.every=100
  LM=$(ls -d "$OUT"/train/dida/checkpoints/step-* | tail -1)
fi

# 4. Export a model directory (guidance.json, lm/, text_tokenizer/, vision_tokenizer/).
.venv/bin/python -c "import sys; from pathlib import Path; from finetune_embodied.default_model import export_model; \
print(export_model(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))" "$LM" "$SHIPPED/vision_tokenizer" "$OUT/model"

# 5. The same loop, held-out seeds: the fine-tuned model, then the oracle.
$EG bench --tasks "${TASKS[@]}" --backend torch --model-path "$OUT/model" --episodes "$BENCH_EPISODES" \
  --workers "$WORKERS" --out "$OUT/bench_torch"
$EG bench --tasks "${TASKS[@]}" --backend oracle --episodes "$BENCH_EPISODES" --workers "$WORKERS" --out "$OUT/bench_oracle"
