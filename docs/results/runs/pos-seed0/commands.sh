.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=pos,seed=0 --workdir /work/runs/r10/pos-seed0 --config.best_metric=eval/pos/word_accuracy --config.best_mode=max
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/pos-seed0 --split validation --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/pos-seed0 --split test --step 1600
