.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=sst2,seed=1 --workdir /work/runs/r12/sst2-equal-seed1 --config.best_metric=eval/sst2/accuracy --config.best_mode=max --config.total_steps=14848
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/sst2-equal-seed1 --split validation --step 3200
