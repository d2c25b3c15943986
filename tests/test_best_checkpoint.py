"""The best checkpoint by best_metric, kept beside the newest."""

import jax

from bloom_jax import checkpointing

METRIC = 'eval/sentiment/accuracy'


def test_the_best_checkpoint_outlives_a_restart(tmp_path):
  state = lambda step: {'w': jax.numpy.full((3,), step, jax.numpy.float32)}
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, best_metric=METRIC)
  ckpt.save(1, state(1), {}, '{}', metrics={METRIC: 0.5})
  ckpt.save(2, state(2), {}, '{}', metrics={METRIC: 0.9})
  ckpt.save(3, state(3), {}, '{}')
  ckpt.wait()
  ckpt.close()
  again = checkpointing.Checkpointer(str(tmp_path), keep=1, best_metric=METRIC)  # a restart
  again.save(4, state(4), {}, '{}')
  again.wait()
  assert again.all_steps() == [2, 4]  # Orbax used to hold the metrics in memory only
  again.close()
