#!/usr/bin/env bash
# SCORE's ablation (docs/RESULTS.md, "SCORE's ablation"): the default and each variant on sneaker,
# then a second seed, then trouser and bag, leakage at 128 trajectories per class. Resumable:
# finished cells in OUT are kept and skipped on a rerun.
# usage: tools/run_score_ablation.sh [OUT] [SCORE_BINARY]
# METHODS and LEAKAGE_TRAJECTORIES override the rows and the leakage sample (the cells on base v1
# were measured with the game rows, score-game,score-game-only,…, at 32 trajectories, and the
# first base-v2 cells around the first design's default, now the row score-negative-guidance); ATTACKS
# names the attacks each cell runs (default none: the ablation compares erasure and leakage).
set -euo pipefail
out="${1:-runs/ablation}"
bin="${2:-.build/release/score}"
methods="${METHODS:-score,score-adversarial,score-game-only,score-eta0,score-eta0.1,score-eta0.5,score-eta1,score-full-unet,score-negative-guidance}"
common=(--methods "$methods" --leakage-trajectories "${LEAKAGE_TRAJECTORIES:-128}" --attacks "${ATTACKS:-none}" --out "$out")
mkdir -p "$out"
nice -n 3 "$bin" benchmark --concepts sneaker --seeds 1 "${common[@]}"
nice -n 3 "$bin" benchmark --concepts sneaker --seeds 2 "${common[@]}"
nice -n 3 "$bin" benchmark --concepts trouser,bag --seeds 2 "${common[@]}"
