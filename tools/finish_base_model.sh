#!/bin/bash
# Measures a newly trained Fashion-MNIST mini-SD against issue 24's bar: check-model at guidance
# 4 and 7.5, sampling seeds 0 and 1, 50 images per class, judged by the ResNet judge and by the
# MLP judge (second opinion). Writes one JSON record per run into OUT and a verdict into
# OUT/summary.json: passes when the ResNet judge's mean over both seeds is >= 98% at both guidances
# and no class (pooled over the seeds) is below 93%.
#
#   tools/finish_base_model.sh MODEL_FOLDER OUT_FOLDER [RESNET_JUDGE_FOLDER] [SCORE_BINARY]
#
# RESNET_JUDGE_FOLDER holds judge-resnet.safetensors (default: the embedded judges); the MLP is
# always the embedded one. SCORE_BINARY defaults to .build/release/score. Finished records are
# kept, so a rerun after a kill measures only what is missing. Runs under nice -n 10, one thread.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,13p "$0"; exit 2
fi
MODEL=$1
OUT=$2
JUDGES=${3:-}
BIN=${4:-.build/release/score}
[ -f "$MODEL/model_index.json" ] || { echo "error: $MODEL has no model_index.json (pass the model folder, e.g. runs/base-v2/mini-sd/model)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "error: no score binary at $BIN (build with: swift build -c release --product score)" >&2; exit 1; }
if [ -n "$JUDGES" ] && [ ! -f "$JUDGES/judge-resnet.safetensors" ]; then
  echo "error: $JUDGES has no judge-resnet.safetensors" >&2; exit 1
fi
mkdir -p "$OUT"
LOG=$OUT/finish.log
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOG"; }

for judge in resnet mlp; do
  for guidance in 4 7.5; do
    for seed in 0 1; do
      record=$OUT/check-model-$judge-g$guidance-s$seed.json
      [ -s "$record" ] && continue
      judges=()
      [ "$judge" = resnet ] && [ -n "$JUDGES" ] && judges=(--judges "$JUDGES")
      log "check-model judge $judge guidance $guidance seed $seed"
      start=$(date +%s)
      nice -n 10 "$BIN" check-model --model "$MODEL" "${judges[@]}" --judge $judge --images-per-class 50 \
        --guidance $guidance --seed $seed --threads 1 --json > "$record.tmp" 2>> "$LOG"
      mv "$record.tmp" "$record"
      log "  done in $(( $(date +%s) - start )) s"
    done
  done
done

# The verdict (python3 from the standard library only).
python3 - "$OUT" <<'PY' | tee -a "$LOG"
import json, os, sys
out = sys.argv[1]
summary = {"criteria": "resnet judge: mean over seeds 0 and 1 >= 98% at guidance 4 and 7.5, no class below 93% (pooled over the seeds)"}
passes = True
for judge in ("resnet", "mlp"):
    for g in ("4", "7.5"):
        runs = [json.load(open(os.path.join(out, f"check-model-{judge}-g{g}-s{s}.json"))) for s in (0, 1)]
        classes = sorted(runs[0]["per_class_accuracy"])
        per_class = {c: sum(r["per_class_accuracy"][c] for r in runs) / len(runs) for c in classes}
        mean = sum(r["mean_accuracy"] for r in runs) / len(runs)
        worst = min(per_class, key=per_class.get)
        entry = {"mean_accuracy": mean, "per_class_accuracy": per_class, "worst_class": worst,
                 "kid": [r["kid"] for r in runs], "mean_border_pixel": [r.get("mean_border_pixel") for r in runs],
                 "real_mean_border_pixel": [r.get("real_mean_border_pixel") for r in runs],
                 "judge_test_accuracy": runs[0].get("judge_test_accuracy")}
        summary[f"{judge}-g{g}"] = entry
        print(f"{judge:6} guidance {g:>3}: mean {mean*100:5.1f}%, worst {worst} {per_class[worst]*100:.0f}%, "
              f"border {entry['mean_border_pixel'][0]:.1f} (real {entry['real_mean_border_pixel'][0]:.1f}), "
              f"judge test accuracy {entry['judge_test_accuracy']*100:.2f}%")
        if judge == "resnet" and (mean < 0.98 or per_class[worst] < 0.93):
            passes = False
summary["passes"] = passes
tmp = os.path.join(out, "summary.json.tmp")
json.dump(summary, open(tmp, "w"), indent=2, sort_keys=True)
os.replace(tmp, os.path.join(out, "summary.json"))
print("PASSES" if passes else "FALLS SHORT", "- see", os.path.join(out, "summary.json"))
PY
