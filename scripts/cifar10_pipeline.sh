#!/usr/bin/env bash
# The CIFAR-10 defences end to end, resumable at every step: train (bundled recipes), ship the weights into
# the zoo (scripts/zoo_ship.py), evaluate (config thesis_cifar10, one folder per model), and write
# docs/results/cifar10 (scripts/thesis_results.py). Two lanes share the work of a two-core machine:
#   bash scripts/cifar10_pipeline.sh a &  bash scripts/cifar10_pipeline.sh b;  wait
#   bash scripts/cifar10_pipeline.sh results
# Lane a: the clean model, then the "robust" UOT fine-tune (the slowest) and its evaluation.
# Lane b: waits for the clean model, then the other fine-tunes and the evaluation of the other models.
# A killed lane restarted with the same command continues where it stopped. LIMIT (default 100) sets the
# number of test images evaluated; a larger LIMIT reuses the finished units.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT="${LIMIT:-100}"
train() {  # recipe, run folder: resumes a killed run; a finished run is left as it is
  sinkhorn-attacks train --config "$1" --resume --log-every 10 --no-plot
}
ship() { python scripts/zoo_ship.py --dataset cifar10 --variants "$@"; }
evaluate() {  # variant
  sinkhorn-attacks evaluate --config thesis_cifar10 --models "sinkhorn-attacks-cifar10-$1" \
    --limit "$LIMIT" --out "runs/thesis_cifar10/$1" --quiet --no-report
}
case "${1:-}" in
  a)
    train cifar10_clean && ship clean
    train cifar10_uot_robust && ship uot-robust && evaluate uot-robust ;;
  b)
    until [ -f runs/cifar10-clean/model.pt ] && [ -f src/sinkhorn_attacks/zoo/weights/cifar10.json ] \
      && grep -q '"clean"' src/sinkhorn_attacks/zoo/weights/cifar10.json; do sleep 30; done
    for v in linf wong hu uot; do train "cifar10_${v}" && ship "$v"; done
    for v in clean linf wong hu uot; do evaluate "$v"; done ;;
  results)
    python scripts/thesis_results.py --dataset cifar10 --runs runs/thesis_cifar10 ;;
  *)
    echo "usage: $0 a|b|results" >&2; exit 2 ;;
esac
