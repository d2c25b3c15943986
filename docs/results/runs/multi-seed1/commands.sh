taskset -c 1 .venv/bin/python -m bloom_jax.train --config configs/real_multitask.py:seed=1 --workdir /work/runs/lw/multi-seed1 --config.tasks.aeslc.loss_weight=2.0 --config.tasks.shakespeare.loss_weight=1.5
taskset -c 1 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed1 --split validation --step 1600
taskset -c 1 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed1 --split test --step 1600
taskset -c 1 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed1 --split validation --step 2000
taskset -c 1 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed1 --split test --step 2000
taskset -c 1 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed1 --split validation --step 1600 --decoding method=greedy --decoding method=beam,num_beams=4,length_penalty=0.6 --decoding method=beam,num_beams=4,length_penalty=1.0 --decoding method=beam,num_beams=4,length_penalty=1.4
taskset -c 1 .venv/bin/python -m bloom_jax.evaluate --workdir /work/runs/lw/multi-seed1 --split test --step 1600 --decoding method=beam,num_beams=4,length_penalty=0.6
