.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:single=aeslc,seed=0 --workdir /work/runs/r10/aeslc-seed0 --config.best_metric=eval/aeslc/rougeL --config.best_mode=max
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/aeslc-seed0 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r10/aeslc-seed0 --split test --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r11/aeslc-seed0 --split validation --step 2000 --decoding method=greedy --decoding method=beam,num_beams=4,length_penalty=0.6 --decoding method=beam,num_beams=4,length_penalty=1.0 --decoding method=beam,num_beams=4,length_penalty=1.4
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r11/aeslc-seed0 --split test --step 2000 --decoding method=beam,num_beams=4,length_penalty=0.6
