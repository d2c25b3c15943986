.venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:seed=1 --workdir /work/runs/attn/multi-seed1 --config.tasks.sst2.pooling=attention --config.keep_checkpoints=1000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split validation --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split test --step 1600
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split validation --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/attn/multi-seed1 --split test --step 2000
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r11/multi-seed1 --split validation --step 2000 --decoding method=greedy --decoding method=beam,num_beams=4,length_penalty=0.6 --decoding method=beam,num_beams=4,length_penalty=1.0 --decoding method=beam,num_beams=4,length_penalty=1.4
.venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/r11/multi-seed1 --split test --step 2000 --decoding method=beam,num_beams=4,length_penalty=0.6
