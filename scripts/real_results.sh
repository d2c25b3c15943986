#!/usr/bin/env bash
# Trains and evaluates every row of docs/results.md: the five-task mixture and each task
# alone, for the given seeds, then writes the table and the learning curves.
#
#   BLOOM_JAX_DATA=../shared/data scripts/real_results.sh runs/results 0 1
#
# Each run is `bloom_jax.train` then `bloom_jax.evaluate` on the validation and test
# splits (whole splits); a finished run is skipped when the script is rerun.
set -euo pipefail
root=${1:?usage: scripts/real_results.sh WORKDIR_ROOT SEED [SEED ...]}
shift
python=${PYTHON:-python}
for seed in "${@:?give at least one seed}"; do
  for variant in multi single=pos single=sst2 single=trec single=aeslc single=shakespeare; do
    arg="seed=${seed}"
    [[ $variant == multi ]] || arg="${variant},${arg}"
    workdir="${root}/${variant#single=}-seed${seed}"
    if [[ ! -f ${workdir}/eval/done ]]; then
      "$python" -m bloom_jax.train --config "configs/real_multitask.py:${arg}" --workdir "$workdir"
      "$python" -m bloom_jax.evaluate --workdir "$workdir" --split validation
      case $variant in  # SST-2's test labels are hidden; Shakespeare has one held-out split
        single=sst2|single=shakespeare) ;;
        *) "$python" -m bloom_jax.evaluate --workdir "$workdir" --split test ;;
      esac
      touch "${workdir}/eval/done"
    fi
  done
done
"$python" scripts/results_table.py "$root"   # the table of docs/results.md
"$python" scripts/plot_metrics.py "$root" --out docs/results
