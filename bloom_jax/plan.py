r"""Plans a training run before the hardware is rented: compiles the real train step for a
TPU slice (or for N simulated CPU devices) from shapes alone, no weights allocated, and
reports what each device holds and what a step costs.

  python -m bloom_jax.plan --config configs/bloom_7b1.py --topology v5p-64 \
      --mesh data=1,fsdp=32,tensor=1 [--batch 128] [--seq 2048] [--mfu 0.4] [--json FILE]

The step trains one causal-LM task on --batch rows of --seq tokens (the config's own
task heads, a few thousand parameters, are left out). Reported per device: parameters and
optimizer state (each array's shard), the batch, XLA's temporary buffers and the peak
(compiled.memory_analysis()), set against the chip's HBM in one verdict line; per step:
model FLOPs (6·params·tokens + 12·layers·hidden·seq·tokens, as the benchmark counts
them), XLA's own count (cost_analysis()), and the step time and tokens/s at --mfu of the
chip's datasheet bf16 peak (bloom_jax/flops.py).

--topology: a TPU slice as Cloud TPU names it (`v5e-256`, `v6e-64`: chips; `v4-8`,
`v5p-128`: TensorCores, two per chip) or as libtpu does (`v5e:2x2`, `v4:2x2x1`), compiled
by libtpu's compiler with no TPU attached (`pip install -e '.[tpu]'`); or `cpu-N`, N
simulated CPU devices compiled by XLA's CPU compiler as a stand-in (then --chip names the
chip to judge memory and time against). See docs/scaling.md.
"""

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from bloom_jax import cli, config_lib, flops, runs, sharding, task_types, tasks

ConfigError = config_lib.ConfigError

FLAGS = flags.FLAGS

# ------------------------------------------------------------------------------ topologies

# Cloud TPU generation -> (libtpu's name, chip in flops.CHIPS, torus dimensions, whether
# the name counts TensorCores (two per chip, one JAX device each in megacore mode), most chips).
GENERATIONS = {
    'v4': ('v4', 'v4', 3, True, 4096),
    'v5p': ('v5p', 'v5p', 3, True, 8192),
    'v5e': ('v5e', 'v5e', 2, False, 256),
    'v5litepod': ('v5e', 'v5e', 2, False, 256),
    'v6e': ('v6e', 'v6e', 2, False, 256),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                    # as given
  platform: str                # 'tpu' | 'cpu'
  num_devices: int
  chip: str = ''               # key of flops.CHIPS ('' for cpu-N)
  libtpu_name: str = ''        # e.g. 'v5e:16x16'
  options: tuple = ()          # further get_topology_desc arguments


def _slice_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Cloud TPU's slice shape for a power-of-two chip count: 2x2 -> 2x4 -> 4x4 ... (v5e,
  v6e), 2x2x1 -> 2x2x2 -> 2x2x4 -> 2x4x4 -> 4x4x4 ... (v4, v5p)."""
  shape = [1, 1] if dims == 2 else [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    i = max(j for j, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return tuple(shape)


def _wraps(shape: tuple[int, ...]) -> tuple[bool, bool, bool]:
  """Torus wrap-around links of a slice: full 16-chip rows on v5e/v6e, every dimension of a
  v4/v5p slice whose sides are all multiples of 4."""
  if len(shape) == 2:
    return (shape[0] == 16, shape[1] == 16, False)
  return (all(s % 4 == 0 for s in shape),) * 3


def parse_topology(name: str) -> Topology:
  """`cpu-N`, `GEN-N` (Cloud TPU's names) or `GEN:AxB[xC]` (libtpu's)."""
  usage = ("--topology: expected cpu-N, a Cloud TPU slice (v4-8, v5p-128, v5e-256, v6e-64) or "
           f"libtpu's GEN:AxB[xC] (v5e:2x2, v4:2x2x1), got {name!r}")
  if m := re.fullmatch(r'cpu-(\d+)', name):
    if int(m[1]) < 1:
      raise ConfigError(usage)
    return Topology(name, 'cpu', int(m[1]))
  m = re.fullmatch(r'(v4|v5p|v5e|v5litepod|v6e)(?:-(\d+)|:(\d+(?:x\d+){1,2}))', name)
  if not m:
    raise ConfigError(usage)
  gen, count, dims = m[1], m[2], m[3]
  libtpu_gen, chip, ndim, counts_cores, most = GENERATIONS[gen]
  if count:
    chips = int(count) // 2 if counts_cores else int(count)
    sizes = [2 ** k for k in range(2, most.bit_length())] + ([1] if ndim == 2 else [])
    if int(count) % (2 if counts_cores else 1) or chips not in sizes:
      unit = 'TensorCores (two per chip)' if counts_cores else 'chips'
      raise ConfigError(f'--topology {name}: {gen}-N counts {unit}; N must give a power of two '
                        f'of at least 4 chips and at most {most} (other slices: '
                        f'{libtpu_gen}:' + 'x'.join(['A', 'B', 'C'][:ndim]) + ')')
    shape = _slice_shape(chips, ndim)
  else:
    shape = tuple(int(d) for d in dims.split('x'))
    if len(shape) != ndim or min(shape) < 1:
      raise ConfigError(f'--topology {name}: {gen} slices have {ndim} dimensions, e.g. '
                        + ('v4:2x2x1' if ndim == 3 else 'v5e:2x2'))
  options = [('wrap', _wraps(shape))]
  if counts_cores:
    options.append(('chip_config_name', 'megacore'))  # one JAX device per chip
  return Topology(name, 'tpu', math.prod(shape), chip,
                  f'{libtpu_gen}:' + 'x'.join(map(str, shape)), tuple(options))


def start_jax(topology: Topology) -> None:
  """Settings that must precede JAX's first backend: only the CPU backend ever starts (the
  plan runs nothing), with N devices for `cpu-N` (XLA's
  --xla_force_host_platform_device_count, as a JAX setting)."""
  try:
    jax.config.update('jax_platforms', 'cpu')
    if topology.platform == 'cpu':
      jax.config.update('jax_num_cpu_devices', topology.num_devices)
  except RuntimeError as e:
    raise ConfigError(f'--topology {topology.name}: JAX started before the plan could set '
                      f'its devices ({e})') from None


def devices_of(topology: Topology) -> list:
  if topology.platform == 'cpu':
    return jax.devices('cpu')
  if importlib.util.find_spec('libtpu') is None:
    raise ConfigError(f"--topology {topology.name}: compiling for TPU needs libtpu: "
                      "pip install -e '.[tpu]'")
  # Compiling takes no TPU: a TPU job already running on this host (which holds libtpu's
  # lock file) need not stop for a plan.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # noqa: PLC0415 - loads libtpu's compiler

  with _quiet_stderr() as noise:
    try:
      desc = topologies.get_topology_desc(platform='tpu', topology_name=topology.libtpu_name,
                                          **dict(topology.options))
    except Exception as e:  # noqa: BLE001 - libtpu's own error, reported in one line
      raise ConfigError(f'--topology {topology.name}: libtpu cannot describe '
                        f'{topology.libtpu_name}: {str(e).splitlines()[0]}') from None
  if len(desc.devices) != topology.num_devices:
    raise ConfigError(f'--topology {topology.name}: libtpu gave {len(desc.devices)} devices '
                      f'for {topology.libtpu_name}, expected {topology.num_devices}'
                      + (f' ({noise()[:300]})' if noise() else ''))
  return list(desc.devices)


class _quiet_stderr:
  """libtpu writes warnings about the absent TPU host (its accelerator type, worker
  hostnames) straight to file descriptor 2; hold them back, readable on request."""

  def __enter__(self):
    sys.stderr.flush()
    self._file = tempfile.TemporaryFile()
    self._saved = os.dup(2)
    os.dup2(self._file.fileno(), 2)
    return self.read

  def read(self) -> str:
    self._file.seek(0)
    return ' '.join(self._file.read().decode(errors='replace').split())

  def __exit__(self, *exc):
    os.dup2(self._saved, 2)
    os.close(self._saved)
    return False


def parse_mesh(text: str, default) -> dict:
  """'data=1,fsdp=8,tensor=1' (any subset; the others from the config; -1 fills)."""
  mesh = {axis: int(default[axis]) for axis in sharding.MESH_AXES}
  for part in filter(None, text.split(',')):
    axis, _, value = part.partition('=')
    if axis.strip() not in mesh or not re.fullmatch(r'-?\d+', value.strip()):
      raise ConfigError(f'--mesh: expected comma-separated AXIS=SIZE with AXIS one of '
                        f'{", ".join(sharding.MESH_AXES)}, got {part!r}')
    mesh[axis.strip()] = int(value)
  return mesh


def device_mesh(topology: Topology, devices: list, mesh_config: dict):
  try:
    shape = sharding.mesh_shape(mesh_config, len(devices))
  except ValueError as e:
    raise ConfigError(f'--mesh: {str(e).removeprefix("mesh: ")} (--topology '
                      f'{topology.name})') from None
  if topology.platform == 'tpu':
    from jax.experimental import mesh_utils  # noqa: PLC0415

    try:  # mesh axes laid along the torus, as jax.make_mesh does on a real slice
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
      return jax.sharding.Mesh(grid, sharding.MESH_AXES)
    except (AssertionError, NotImplementedError, ValueError):
      pass
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), sharding.MESH_AXES)


# ------------------------------------------------------------------------------ the plan


def shard_bytes(tree) -> int:
  """Bytes one device holds of every array in `tree` (abstract arrays with shardings)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def total_bytes(tree) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def lm_batch(batch: int, seq: int, mesh) -> dict:
  """The abstract batch of one LM task, sharded over the batch axes as the trainer's."""
  spec = sharding.batch_sharding(mesh)
  fields = {'input_ids': np.int32, 'segment_ids': np.int32, 'targets': np.int32,
            'weights': np.float32}
  return {'lm': {k: jax.ShapeDtypeStruct((batch, seq), d, sharding=spec)
                 for k, d in fields.items()}}


def xla_flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return float(cost['flops']) if cost and 'flops' in cost else None


def make_plan(config, config_name: str, topology: Topology, mesh_config: dict, batch: int,
              seq: int, mfu: float, chip_name: str) -> dict:
  devices = devices_of(topology)
  mesh = device_mesh(topology, devices, mesh_config)
  with config.unlocked():
    config.mesh.update(dict(zip(sharding.MESH_AXES, mesh.devices.shape, strict=True)))
  config_lib.validate(config, num_devices=len(devices))
  accum = config.optimizer.grad_accum
  rows = sharding.data_parallel_size(mesh) * accum
  if batch < 1 or batch % rows:
    raise ConfigError(f'--batch: {batch} rows do not split into {accum} micro-batch(es) of '
                      f'whole rows on data*fsdp = {sharding.data_parallel_size(mesh)} devices '
                      f'(use a multiple of {rows})')
  if seq < 4:
    raise ConfigError(f'--seq: {seq} tokens per row leave no room for text')
  task = tasks.TaskSpec('lm', task_types.LM, source=None, max_length=seq, batch_size=batch)
  setup = runs.build(config, {'lm': task}, config.tokenizer.get('vocab_size', 1), mesh)
  state, batch_arrays = setup.abstract_train_state(), lm_batch(batch, seq, mesh)
  t0 = time.perf_counter()
  lowered = setup.train_step.lower(state, batch_arrays)
  t1 = time.perf_counter()
  compiled, error = None, None
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # libtpu refuses a program that cannot fit the chip's HBM: that is the plan's answer.
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    error = ' '.join(str(e).split('See https://')[0].split())
  t2 = time.perf_counter()

  # The parameters' moving average (optimizer.ema_decay) counts as optimizer state.
  opt_state = {k: state[k] for k in ('opt_state', 'ema_params') if k in state}
  per_device = {'params': shard_bytes(state['params']),
                'opt_state': shard_bytes(opt_state),
                'batch': shard_bytes(batch_arrays), 'temp': None, 'peak': None}
  if compiled is not None:
    m = compiled.memory_analysis()
    memory = {k: int(getattr(m, f'{k}_size_in_bytes'))
              for k in ('argument', 'output', 'alias', 'temp', 'generated_code')}
    per_device.update(
        temp=memory['temp'],
        # Donated state aliases the new state: live once, not twice.
        peak=memory['argument'] + memory['output'] - memory['alias'] + memory['temp'],
        **{f'xla_{k}': v for k, v in memory.items()})
  cfg = setup.model_config
  model_flops = flops.train_flops_per_step(cfg, batch, seq)
  plan = {
      'config': config_name,
      'topology': topology.name, 'platform': topology.platform,
      'compiler': ('libtpu' if topology.platform == 'tpu' else 'XLA:CPU (stand-in)'),
      'libtpu_topology': topology.libtpu_name or None, 'num_devices': len(devices),
      'device_kind': devices[0].device_kind,
      'mesh': dict(zip(sharding.MESH_AXES, map(int, mesh.devices.shape), strict=True)),
      'batch': batch, 'seq': seq, 'tokens_per_step': batch * seq, 'grad_accum': accum,
      'model': {'num_params': cfg.num_params, 'hidden_size': cfg.hidden_size,
                'n_layer': cfg.n_layer, 'n_head': cfg.n_head, 'vocab_size': cfg.vocab_size,
                'dtype': cfg.dtype, 'param_dtype': cfg.param_dtype, 'remat': cfg.remat},
      'total_bytes': {'params': total_bytes(state['params']),
                      'opt_state': total_bytes(opt_state)},
      'bytes_per_device': per_device,
      'model_flops_per_step': model_flops,
      'model_flops_per_device': model_flops / len(devices),
      'xla_flops_per_device': xla_flops(compiled) if compiled else None,
      'compile_error': error, 'lower_s': t1 - t0, 'compile_s': t2 - t1, 'mfu': mfu,
      'chip': None, 'fits': None, 'hbm_fraction': None, 'step_s': None, 'tokens_per_s': None}
  if chip_name:
    chip = flops.CHIPS[chip_name]
    step_s = chip.step_seconds(model_flops, len(devices), mfu)
    peak = per_device['peak']
    plan.update(chip=dataclasses.asdict(chip),
                fits=peak is not None and peak <= chip.hbm_bytes,
                hbm_fraction=peak / chip.hbm_bytes if peak is not None else None, step_s=step_s,
                tokens_per_s=batch * seq / step_s)
  return plan


# ------------------------------------------------------------------------------ report


def _size(n: float) -> str:
  if n >= 2**30:
    return f'{n / 2**30:8.2f} GiB'
  return f'{n / 2**20:8.1f} MiB' if n >= 2**20 else f'{n / 2**10:8.1f} KiB'


def _share(part: int, whole: int) -> str:
  return f'of {_size(whole).strip()} in all: 1/{whole / part:.1f}' if part else ''


def verdict(plan: dict) -> str:
  if plan['chip'] is None:
    return ('VERDICT: not judged: a cpu-N plan needs --chip '
            f'({", ".join(flops.CHIPS)}) to be set against a chip\'s HBM and peak')
  chip, peak = plan['chip'], plan['bytes_per_device']['peak']
  if plan['compile_error']:
    return f'VERDICT: DOES NOT FIT: the compiler ran out of HBM: {plan["compile_error"]}'
  used = (f'peak {_size(peak).strip()} of {chip["hbm_bytes"] / 2**30:.0f} GiB HBM per '
          f'{chip["name"]} ({plan["hbm_fraction"]:.0%})')
  if not plan['fits']:
    line = f'VERDICT: DOES NOT FIT: {used}'
  elif plan['hbm_fraction'] > 0.9:
    line = f'VERDICT: FITS, TIGHTLY: {used}; the runtime keeps some HBM for itself'
  else:
    line = f'VERDICT: FITS: {used}'
  if plan['platform'] == 'cpu':
    line += (" (XLA:CPU's temporaries, not the chip's compiler's: parameter and optimizer "
             'bytes carry over, temporaries do not; see docs/scaling.md)')
  return line


def report(plan: dict) -> str:
  m, b, n = plan['model'], plan['bytes_per_device'], plan['num_devices']
  whole = plan['total_bytes']
  mesh = ' '.join(f'{k}={v}' for k, v in plan['mesh'].items())
  where = (f'{n} x {plan["device_kind"]} (libtpu topology {plan["libtpu_topology"]})'
           if plan['platform'] == 'tpu' else
           f"{n} simulated CPU devices: XLA's CPU compiler stands in for the chip's")
  lines = [
      f'plan: {plan["config"]} on {plan["topology"]}, {where}',
      f'mesh: {mesh}; batch {plan["batch"]} rows x {plan["seq"]} tokens = '
      f'{plan["tokens_per_step"]:,} tokens per step, grad_accum {plan["grad_accum"]}',
      f'model: {m["num_params"]:,} parameters (hidden {m["hidden_size"]}, {m["n_layer"]} '
      f'layers, {m["n_head"]} heads, vocab {m["vocab_size"]:,}); {m["dtype"]} compute, '
      f'{m["param_dtype"]} parameters, remat {m["remat"]}',
      f'{"compile stopped after" if plan["compile_error"] else "compiled in"} '
      f'{plan["lower_s"] + plan["compile_s"]:.1f} s (lowering {plan["lower_s"]:.1f} s, '
      f'{plan["compiler"]} {plan["compile_s"]:.1f} s)',
      '',
      'memory per device:',
      f'  parameters       {_size(b["params"])}   ({_share(b["params"], whole["params"])})',
      f'  optimizer state  {_size(b["opt_state"])}   '
      f'({_share(b["opt_state"], whole["opt_state"])})',
      f'  batch            {_size(b["batch"])}',
  ]
  if plan['compile_error']:
    lines.append('  XLA temporaries  (not compiled: see the verdict)')
  else:
    lines += [
        f'  XLA temporaries  {_size(b["temp"])}   (activations, gradients, logits, collectives)',
        f'  peak             {_size(b["peak"])}   (arguments + outputs - donated + temporaries)']
  if plan['chip']:
    lines.append(f'  HBM              {_size(plan["chip"]["hbm_bytes"])}   '
                 f'({plan["chip"]["name"]}, {plan["chip"]["source"]})')
  xla = plan['xla_flops_per_device']
  lines += [
      '',
      'compute per step:',
      f'  model FLOPs      {plan["model_flops_per_step"]:.3e}   (6*params*tokens + '
      f'12*layers*hidden*seq*tokens; {plan["model_flops_per_device"]:.3e} per device)',
      f'  XLA FLOPs        {xla * n:.3e}   ({xla:.3e} per device by its cost analysis, which '
      'counts the scanned layers\' loop body once)' if xla else
      '  XLA FLOPs        ' + ('(not compiled)' if plan['compile_error'] else
                               'not reported by this compiler'),
  ]
  if plan['chip']:
    chip, step_s = plan['chip'], plan['step_s']
    lines += [
        f'  projected        {step_s:.3f} s per step, {plan["tokens_per_s"]:,.0f} tokens/s '
        f'({plan["tokens_per_s"] / n:,.0f} per chip)' if step_s >= 1e-3 else
        f'  projected        {step_s * 1e6:.1f} us per step, {plan["tokens_per_s"]:,.0f} '
        'tokens/s',
        f'                   at MFU {plan["mfu"]:.2f} of {chip["peak_bf16_flops"] / 1e12:.0f} '
        f'TFLOP/s bf16 per {chip["name"]} ({chip["source"]})']
  return '\n'.join([*lines, '', verdict(plan)])


def main(argv):
  del argv
  topology = parse_topology(FLAGS.topology)
  chip = FLAGS.chip or topology.chip
  if chip and chip not in flops.CHIPS:
    raise ConfigError(f'--chip: {chip!r} is not one of {", ".join(flops.CHIPS)}')
  if topology.platform == 'tpu' and chip != topology.chip:
    raise ConfigError(f'--chip: --topology {topology.name} is a {topology.chip} slice; '
                      '--chip is for cpu-N plans')
  if not 0 < FLAGS.mfu <= 1:
    raise ConfigError(f'--mfu: a fraction in (0, 1], got {FLAGS.mfu}')
  start_jax(topology)
  config = FLAGS.config
  mesh = parse_mesh(FLAGS.mesh, config.mesh)
  batch = FLAGS.batch or config.data.batch_size
  plan = make_plan(config, config_flags.get_config_filename(FLAGS['config']), topology, mesh,
                   batch, FLAGS.seq, FLAGS.mfu, chip)
  print(report(plan), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, 'w', encoding='utf-8') as f:
      json.dump(plan, f, indent=2)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
  flags.DEFINE_string('topology', None, 'cpu-N, a TPU slice (v4-8, v5p-128, v5e-256, v6e-64) '
                      "or libtpu's name for one (v5e:2x2).", required=True)
  flags.DEFINE_string('mesh', '', 'data=D,fsdp=F,tensor=T (any subset; the rest from the '
                      'config; -1 fills the devices).')
  flags.DEFINE_integer('batch', 0, 'Rows per step, all devices together (default: the '
                       "config's data.batch_size).")
  flags.DEFINE_integer('seq', 2048, 'Tokens per row.')
  flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation assumed for the projected step time.')
  flags.DEFINE_string('chip', '', 'The chip a cpu-N plan is judged against: '
                      + ', '.join(flops.CHIPS) + " (TPU slices: their own).")
  flags.DEFINE_string('json', '', 'Also write the plan to this JSON file.')
  flags.mark_flag_as_required('config')
  cli.run(main)
