.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=sst2,seed=0 --workdir /work/runs/attn/sst2-seed0 --config.best_metric=eval/sst2/accuracy --config.best_mode=max --config.tasks.sst2.pooling=attention
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/sst2-seed0 --split validation --step 2000
