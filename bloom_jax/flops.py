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


def train_flops_per_step(cfg, batch: int, seq: int) -> float:
  """Model FLOPs of one optimizer step on `batch` rows of `seq` tokens (a BloomConfig)."""
  tokens = batch * seq
  return 6 * cfg.num_params * tokens + 12 * cfg.n_layer * cfg.hidden_size * seq * tokens
