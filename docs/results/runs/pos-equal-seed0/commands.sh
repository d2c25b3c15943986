.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=pos,seed=0 --workdir /work/runs/r10/pos-equal-seed0 --config.best_metric=eval/pos/word_accuracy --config.best_mode=max --config.total_steps=10764
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/pos-equal-seed0 --split validation --step 10400
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/pos-equal-seed0 --split test --step 10400
