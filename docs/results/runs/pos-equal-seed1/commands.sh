.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=pos,seed=1 --workdir /work/runs/r12/pos-equal-seed1 --config.best_metric=eval/pos/word_accuracy --config.best_mode=max --config.total_steps=10764
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/pos-equal-seed1 --split validation --step 8400
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/pos-equal-seed1 --split test --step 8400
