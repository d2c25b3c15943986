"""The model-FLOP count behind every MFU, and the peak it is measured against."""

import dataclasses

import pytest

from bloom_jax import flops, tasks
from bloom_jax.model import BloomConfig
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM

CFG = BloomConfig(vocab_size=1000, hidden_size=64, n_layer=3, n_head=4)


def test_projections_count_only_where_the_vocabulary_is_scored():
  trunk = CFG.num_params - CFG.vocab_size * CFG.hidden_size
  attention = 12 * 3 * 64 * 32 * (8 * 32)
  by_hand = 6 * trunk * 8 * 32 + attention
  assert flops.train_flops_per_step(CFG, 8, 32, vocab_positions=0) == by_hand
  assert flops.train_flops_per_step(CFG, 8, 32) == 6 * CFG.num_params * 8 * 32 + attention
  assert flops.train_flops_per_step(CFG, 8, 32, vocab_positions=5) == \
      by_hand + 6 * CFG.vocab_size * CFG.hidden_size * 8 * 5


def test_a_mixture_sums_its_tasks_as_their_types_project():
  spec = lambda name, kind, **kw: dataclasses.replace(
      tasks.TaskSpec(name, kind, source=None, labels=('a', 'b')), batch_size=4, max_length=32,
      **kw)
  mixture = [spec('c', CLASSIFICATION), spec('g', GENERATION, max_target_length=6),
             spec('l', LM)]
  assert flops.multitask_flops_per_step(CFG, mixture) == (
      flops.train_flops_per_step(CFG, 4, 32, 0) + flops.train_flops_per_step(CFG, 4, 32, 14)
      + flops.train_flops_per_step(CFG, 4, 32))


@dataclasses.dataclass
class _Device:
  device_kind: str


@pytest.mark.parametrize('kind, chip', [('TPU v4', 'v4'), ('TPU v5 lite', 'v5e'),
                                        ('TPU v5p', 'v5p'), ('NVIDIA H100 80GB HBM3', 'h100'),
                                        ('NVIDIA A100-SXM4-80GB', 'a100-80gb')])
def test_known_chips_use_their_datasheet_peak(kind, chip):
  peak, source = flops.device_peak(_Device(kind), 'bfloat16')
  assert peak == flops.CHIPS[chip].peak_bf16_flops and chip in source


def test_a_cpu_peak_is_measured_and_says_so():
  peak, source = flops.device_peak(_Device('cpu'), 'float32')
  assert 1e8 < peak < 1e14 and source.startswith('measured')
