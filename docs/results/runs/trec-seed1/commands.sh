.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=trec,seed=1 --workdir /work/runs/r10/trec-seed1 --config.best_metric=eval/trec/accuracy --config.best_mode=max
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/trec-seed1 --split validation --step 1200
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/trec-seed1 --split test --step 1200
