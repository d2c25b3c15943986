"""The library behind `python -m bloom_jax.sweep` (bloom_jax/sweep.py, its command line).

  definitions  what a config's get_sweep/get_search_space build: trials, names, resolve
  runner       runs trials as bloom_jax.train processes and records how each exited
  reports      each trial's result read from its directory; results.csv, .md and .png
  search       the Optuna study that proposes trials for --search optuna
"""
