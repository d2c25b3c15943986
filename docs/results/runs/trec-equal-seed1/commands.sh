.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=trec,seed=1 --workdir /work/runs/r12/trec-equal-seed1 --config.best_metric=eval/trec/accuracy --config.best_mode=max --config.total_steps=34865
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/trec-equal-seed1 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/trec-equal-seed1 --split test --step 2000
