.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=pos,seed=1 --workdir /work/runs/r10/pos-seed1 --config.best_metric=eval/pos/word_accuracy --config.best_mode=max
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/pos-seed1 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/pos-seed1 --split test --step 2000
