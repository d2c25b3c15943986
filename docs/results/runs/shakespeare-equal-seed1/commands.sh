.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=shakespeare,seed=1 --workdir /work/runs/r12/shakespeare-equal-seed1 --config.best_metric=eval/shakespeare/bits_per_byte --config.best_mode=min --config.total_steps=9329
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/shakespeare-equal-seed1 --split validation --step 1600
