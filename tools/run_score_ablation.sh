#!/usr/bin/env bash
# SCORE's ablation (docs/RESULTS.md, "SCORE's ablation"): every variant on sneaker, then a second
# seed, then trouser and bag. Resumable: finished cells in OUT are kept and skipped on a rerun.
# usage: tools/run_score_ablation.sh [OUT] [SCORE_BINARY]
set -euo pipefail
out="${1:-runs/ablation}"
bin="${2:-.build/release/score}"
methods=score-game,score-game-only,score-negative-guidance,score-game-no-adversarial,score-game-eta0,score-game-eta0.5
common=(--methods "$methods" --leakage-trajectories 32 --out "$out")
mkdir -p "$out"
nice -n 3 "$bin" benchmark --concepts sneaker --seeds 1 "${common[@]}"
nice -n 3 "$bin" benchmark --concepts sneaker --seeds 2 "${common[@]}"
nice -n 3 "$bin" benchmark --concepts trouser,bag --seeds 2 "${common[@]}"
