#!/usr/bin/env bash
# The Tiny ImageNet defences end to end, resumable at every step: train (bundled recipes tinyimagenet_clean,
# _uot, _linf), ship the trained parts into the zoo (scripts/zoo_ship.py), evaluate (config
# thesis_tinyimagenet, one folder per model), and write docs/results/tinyimagenet (scripts/thesis_results.py):
#   bash scripts/tinyimagenet_pipeline.sh train && bash scripts/tinyimagenet_pipeline.sh evaluate
#   bash scripts/tinyimagenet_pipeline.sh results
# A killed step restarted with the same command continues where it stopped. LIMIT (default 200) sets the
# number of validation images evaluated; a larger LIMIT reuses the finished units. Needs the [pretrained] extra.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT="${LIMIT:-200}"
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-4000000000}"  # keep large buffers: 2x less CPU time
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-4000000000}"
case "${1:-}" in
  train)
    for v in clean uot linf; do
      sinkhorn-attacks train --config "tinyimagenet_${v}" --resume --log-every 20 --no-plot
      python scripts/zoo_ship.py --dataset tinyimagenet --variants "$v"
    done ;;
  evaluate)
    for v in clean uot linf; do
      sinkhorn-attacks evaluate --config thesis_tinyimagenet --models "sinkhorn-attacks-tinyimagenet-$v" \
        --limit "$LIMIT" --out "runs/thesis_tinyimagenet/$v" --quiet --no-report
    done ;;
  results)
    python scripts/thesis_results.py --dataset tinyimagenet --runs runs/thesis_tinyimagenet ;;
  *)
    echo "usage: $0 train|evaluate|results" >&2; exit 2 ;;
esac
