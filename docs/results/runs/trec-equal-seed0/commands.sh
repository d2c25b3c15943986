.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=trec,seed=0 --workdir /work/runs/r10/trec-equal-seed0 --config.best_metric=eval/trec/accuracy --config.best_mode=max --config.total_steps=34865
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/trec-equal-seed0 --split validation --step 20800
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/trec-equal-seed0 --split test --step 20800
