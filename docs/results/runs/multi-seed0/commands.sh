taskset -c 0 .venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:seed=0 --workdir /work/runs/lw/multi-seed0 --config.tasks.aeslc.loss_weight=2.0 --config.tasks.shakespeare.loss_weight=1.5
taskset -c 0 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed0 --split validation --step 2000
taskset -c 0 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed0 --split test --step 2000
taskset -c 0 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed0 --split validation --step 2000 --decoding method=greedy --decoding method=beam,num_beams=4,length_penalty=0.6 --decoding method=beam,num_beams=4,length_penalty=1.0 --decoding method=beam,num_beams=4,length_penalty=1.4
taskset -c 0 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed0 --split test --step 2000 --decoding method=beam,num_beams=4,length_penalty=0.6
