.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=aeslc,seed=1 --workdir /work/runs/r12/aeslc-equal-seed1 --config.best_metric=eval/aeslc/rougeL --config.best_mode=max --config.total_steps=5284
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/aeslc-equal-seed1 --split validation --step 3600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/aeslc-equal-seed1 --split test --step 3600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/aeslc-equal-seed1 --split validation --step 3600 --decoding method=greedy --decoding method=beam,num_beams=4,length_penalty=0.6 --decoding method=beam,num_beams=4,length_penalty=1.0 --decoding method=beam,num_beams=4,length_penalty=1.4
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r12/aeslc-equal-seed1 --split test --step 3600 --decoding method=beam,num_beams=4,length_penalty=0.6
