#!/usr/bin/env bash
# Trains and scores every run of docs/results.md for the given seeds: the five-task mixture,
# each task alone on the mixture's data (data-matched: the same rows per step and steps) and
# each task alone on the mixture's compute (equal compute: the steps the mixture's step-loop
# time buys it), then draws the learning curves and writes docs/results.json (`models`) and
# docs/results.md.
#
#   BLOOM_JAX_DATA=../shared/data MACHINE="2-core x86-64 CPU, no GPU" \
#       scripts/real_results.sh runs/results 0 1
#
# Each task's checkpoint is selected on validation (the best in-training evaluation of its
# headline metric, scripts/results_table.py) and its whole validation and test splits are
# scored at that step. A generating task's decoding is chosen there too: each setting of
# results_table.py's DECODINGS on the whole validation split, then test with the best.
# A run's commands go to WORKDIR/commands.sh, which results.json quotes. A run with
# WORKDIR/eval/done is not trained or scored again when the script is rerun (its missing
# decoding scores are added); an interrupted one resumes.
#
# With LOGS=DIR, each finished run's logs (all that results.json is collected from, without
# the checkpoints' arrays: scripts/results_table.py logs) are copied to DIR/<run> as well;
# docs/results/runs holds those of the published rows. The protocol takes hours: on a machine
# that may not keep WORKDIR_ROOT, copy DIR's runs into a new root (cp -r DIR/. ROOT) and rerun
# the script there to go on; the runs copied are not trained again.
#
# EQUAL_SEEDS="0" limits the equal-compute runs, five mixtures' time per seed, to those of
# the seeds it names (default: every seed given; empty: none). EQUAL_STEPS_SEED=0 takes
# every seed's equal-compute steps from seed 0's mixture and task-alone runs (default: each
# seed's own): the cost of a step does not depend on the seed, and only runs that had the
# machine to themselves measure it.
set -euo pipefail
root=${1:?usage: scripts/real_results.sh WORKDIR_ROOT SEED [SEED ...]}
shift
seeds=("${@:?give at least one seed}")
read -r -a equal_seeds <<< "${EQUAL_SEEDS-${seeds[*]}}"
for seed in "${equal_seeds[@]}"; do
  [[ " ${seeds[*]} " == *" ${seed} "* ]] || {
    echo "EQUAL_SEEDS: seed ${seed} is not among the seeds given (${seeds[*]})" >&2
    exit 2
  }
done
steps_seed=${EQUAL_STEPS_SEED-}
if [[ -n $steps_seed && " ${seeds[*]} " != *" ${steps_seed} "* ]]; then
  echo "EQUAL_STEPS_SEED: seed ${steps_seed} is not among the seeds given (${seeds[*]})" >&2
  exit 2
fi
python=${PYTHON:-python}
logs=${LOGS:-}
table=("$python" scripts/results_table.py)
machine=${MACHINE:-"$(nproc) CPU cores ($(uname -m)), JAX devices: $("$python" -c \
    'import jax; print(", ".join(sorted({d.device_kind for d in jax.devices()})))')"}

# logged WORKDIR COMMAND...: appends COMMAND to WORKDIR/commands.sh, then runs it.
logged() {
  local workdir=$1 word line=''
  shift
  for word in "$@"; do  # quoted only where the shell needs it
    [[ $word =~ ^[[:alnum:]_./:=,@+-]+$ ]] || word=$(printf '%q' "$word")
    line+="${word} "
  done
  echo "${line% }" >> "${workdir}/commands.sh"
  "$@"
}

# run NAME CONFIG_ARG [TRAIN FLAG ...]: trains ROOT/NAME on configs/real_multitask.py:CONFIG_ARG
# and scores the step selected for each of its tasks, unless it has; then copies its logs.
run() {
  local workdir="${root}/$1" arg=$2
  shift 2
  if [[ ! -f ${workdir}/eval/done ]]; then
    train_and_score "$workdir" "$arg" "$@"
  fi
  decode "$workdir" validation
  decode "$workdir" test  # with the setting chosen on validation
  if [[ -n $logs ]]; then
    "${table[@]}" logs "$workdir" "${logs}/${workdir##*/}"
  fi
}

# train_and_score WORKDIR CONFIG_ARG [TRAIN FLAG ...]
train_and_score() {
  local workdir=$1 arg=$2
  shift 2
  mkdir -p "$workdir"
  : > "${workdir}/commands.sh"
  logged "$workdir" "$python" -m bloom_jax.train --config "configs/real_multitask.py:${arg}" \
      --workdir "$workdir" "$@"
  local listed pairs pair split step
  listed=$("${table[@]}" evaluations "$workdir")  # SPLIT STEP lines
  mapfile -t pairs <<< "$listed"
  for pair in "${pairs[@]}"; do
    read -r split step <<< "$pair"
    logged "$workdir" "$python" -m bloom_jax.evaluate --workdir "$workdir" --split "$split" \
        --step "$step"
  done
  touch "${workdir}/eval/done"
}

# decode WORKDIR SPLIT: scores the decoding settings the run has yet to score on SPLIT.
decode() {
  local workdir=$1 split=$2 listed line step settings setting lines
  listed=$("${table[@]}" decodings "$workdir" "$split")  # STEP SETTING... lines
  [[ -n $listed ]] || return 0
  mapfile -t lines <<< "$listed"
  for line in "${lines[@]}"; do
    read -r step settings <<< "$line"
    local flags=()
    for setting in $settings; do
      flags+=(--decoding "$setting")
    done
    logged "$workdir" "$python" -m bloom_jax.evaluate --workdir "$workdir" --split "$split" \
        --step "$step" "${flags[@]}"
  done
}

listed=$("${table[@]}" selection)  # TASK METRIC MODE lines: each task's headline metric
mapfile -t selection <<< "$listed"
# Every seed's data-matched runs come before the equal-compute ones, which cost five
# mixtures per seed: an interrupted script has the cheaper comparison complete first.
# The equal-compute steps come from the ratio of two runs' median steps/s, which is the
# ratio of their costs only if both had the machine to themselves: run this script alone
# (or name a seed whose runs did: EQUAL_STEPS_SEED).
for seed in "${seeds[@]}"; do
  # The mixture keeps every checkpoint (five: every 400 of 2,000 steps), since each task
  # is scored at its own selected step; one task alone keeps its best (best_metric).
  run "multi-seed${seed}" "seed=${seed}" --config.keep_checkpoints=1000
  for line in "${selection[@]}"; do
    read -r task metric mode <<< "$line"
    run "${task}-seed${seed}" "single=${task},seed=${seed}" --config.best_metric="$metric" \
        --config.best_mode="$mode"
  done
done
for seed in "${equal_seeds[@]}"; do
  for line in "${selection[@]}"; do
    read -r task metric mode <<< "$line"
    from=${steps_seed:-$seed}
    steps=$("${table[@]}" equal-steps "${root}/multi-seed${from}" "${root}/${task}-seed${from}")
    run "${task}-equal-seed${seed}" "single=${task},seed=${seed}" --config.best_metric="$metric" \
        --config.best_mode="$mode" --config.total_steps="$steps"
  done
done

# Learning curves: the mixture beside each task alone, data-matched, then equal compute.
matched=() equal=()
for seed in "${seeds[@]}"; do
  matched+=("${root}/multi-seed${seed}")
  for line in "${selection[@]}"; do
    matched+=("${root}/${line%% *}-seed${seed}")
  done
done
for seed in "${equal_seeds[@]}"; do
  equal+=("${root}/multi-seed${seed}")
  for line in "${selection[@]}"; do
    equal+=("${root}/${line%% *}-equal-seed${seed}")
  done
done
"$python" scripts/plot_metrics.py "${matched[@]}" --out docs/results
if (( ${#equal[@]} )); then
  "$python" scripts/plot_metrics.py "${equal[@]}" --out docs/results \
      --name learning-curves-equal-compute
fi
"${table[@]}" collect "$root" --machine "$machine" --logs "$logs" \
    ${steps_seed:+--equal-steps-seed "$steps_seed"}
