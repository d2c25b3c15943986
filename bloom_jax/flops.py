"""What a train step costs in FLOPs, and what the chips we plan for deliver.

`train_flops_per_step` is the model-FLOP count behind every MFU this project reports (the
benchmark's and `bloom_jax.plan`'s): 6 FLOPs per parameter per token (forward 2, backward
4), plus attention's two [S, S] products per layer, 12·L·H·S per token. Recomputation
under remat is not counted: MFU measures useful work.

`CHIPS` holds each chip's dense bf16 peak and HBM per chip as its vendor's datasheet states
them (Google Cloud TPU system-architecture pages, NVIDIA's A100/H100/H200 datasheets,
SXM parts, without sparsity). Memory sizes are read as GiB (2^30 bytes), which is what the
chips report to XLA.
"""

import dataclasses
import time

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_bf16_flops: float    # FLOP/s per chip, dense
  hbm_bytes: int            # per chip
  source: str

  def step_seconds(self, model_flops: float, chips: int, mfu: float) -> float:
    """Seconds per step for `model_flops` spread over `chips` running at `mfu` of peak."""
    return model_flops / (mfu * self.peak_bf16_flops * chips)


_TPU = 'Google Cloud TPU datasheet'
_NVIDIA = 'NVIDIA datasheet, SXM, dense'
CHIPS = {c.name: c for c in [
    Chip('v4', 275e12, 32 * GIB, _TPU),
    Chip('v5e', 197e12, 16 * GIB, _TPU),
    Chip('v5p', 459e12, 95 * GIB, _TPU),
    Chip('v6e', 918e12, 32 * GIB, _TPU),
    Chip('a100-40gb', 312e12, 40 * GIB, _NVIDIA),
    Chip('a100-80gb', 312e12, 80 * GIB, _NVIDIA),
    Chip('h100', 989e12, 80 * GIB, _NVIDIA),
    Chip('h200', 989e12, 141 * GIB, _NVIDIA),
]}


def train_flops_per_step(cfg, batch: int, seq: int, vocab_positions: int | None = None) -> float:
  """Model FLOPs of one optimizer step on `batch` rows of `seq` tokens (a BloomConfig).

  `vocab_positions`: the positions per row projected onto the vocabulary (default: all,
  as in language modelling; a classification head projects none, generation only its
  targets). The embedding lookup itself is no product, so the embedding matrix counts
  only through those projections.
  """
  tokens = batch * seq
  projected = batch * (seq if vocab_positions is None else vocab_positions)
  embedding = cfg.vocab_size * cfg.hidden_size
  return (6 * (cfg.num_params - embedding) * tokens + 6 * embedding * projected
          + 12 * cfg.n_layer * cfg.hidden_size * seq * tokens)


def multitask_flops_per_step(cfg, tasks) -> float:
  """Model FLOPs of one step over every task's sub-batch (TaskSpecs with batch sizes): each
  task's rows of `max_length` tokens, projected onto the vocabulary where its type does."""
  return sum(train_flops_per_step(cfg, t.batch_size, t.max_length, t.type.vocab_positions(t))
             for t in tasks)


# `device_kind` as XLA names it -> CHIPS.
DEVICE_KINDS = (('tpu v4', 'v4'), ('tpu v5 lite', 'v5e'), ('tpu v5e', 'v5e'), ('tpu v5', 'v5p'),
                ('tpu v6', 'v6e'), ('a100', 'a100-80gb'), ('h100', 'h100'), ('h200', 'h200'))


def device_peak(device, dtype: str) -> tuple[float, str]:
  """(FLOP/s, where the figure comes from) of one device: the datasheet's dense bf16 peak
  for a chip in CHIPS, else (CPUs) a measured `dtype` matrix product on this device."""
  kind = device.device_kind.lower()
  for key, chip in DEVICE_KINDS:
    if key in kind:
      return CHIPS[chip].peak_bf16_flops, f'{chip}: {CHIPS[chip].source}'
  return measured_matmul_flops(dtype), f'measured: a 1024x1024 {dtype} matmul on {kind}'


def measured_matmul_flops(dtype: str, n: int = 1024, reps: int = 5) -> float:
  """The best of `reps` timings of one jitted n x n matrix product, in FLOP/s."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((n, n), dtype)
  product = jax.jit(lambda a: a @ a)
  product(x).block_until_ready()
  best = float('inf')
  for _ in range(reps):
    start = time.perf_counter()
    product(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best
