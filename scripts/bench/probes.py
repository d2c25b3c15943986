"""The measurements both benchmark modes share: timers, the matmul and bandwidth ceilings,
XLA's own FLOP and memory analysis of a compiled program, the step's and one token's
weight-matrix products alone (XLA against PyTorch), and our jitted train step."""

import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bloom_jax import flops, runs, sharding, steps, task_types, tasks
from configs import seed as seed_config

# ------------------------------------------------------------------------------ timers


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def median_time(fn, reps: int, warmup: int = 1) -> tuple[float, list[float]]:
  for _ in range(warmup):
    fn()
  times = [timed(fn) for _ in range(reps)]
  return statistics.median(times), times


def cost_flops(compiled) -> float | None:
  """XLA's own FLOP count of a compiled executable (a dict, or a list of one per device)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost['flops']) if cost and 'flops' in cost else None


def memory_stats(compiled) -> dict:
  m = compiled.memory_analysis()
  stats = {k: int(getattr(m, k)) for k in (
      'argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
      'temp_size_in_bytes', 'generated_code_size_in_bytes')}
  # Donated arguments alias outputs, so they are live once, not twice.
  stats['peak_bytes'] = (stats['argument_size_in_bytes'] + stats['output_size_in_bytes']
                         - stats['alias_size_in_bytes'] + stats['temp_size_in_bytes'])
  return stats


def fmt_rate(x: float, unit: str) -> str:
  for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.2f} {prefix}{unit}'
  return f'{x:.2f} {unit}'


# ------------------------------------------------------------------------------ ceilings


def matmul_probe(n: int, dtype: str, reps: int = 5) -> Callable[[], float]:
  """A function reading the matmul ceiling now: FLOP/s of an n x n `jnp.dot`."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()

  def read() -> float:
    _, times = median_time(lambda: dot(a, b).block_until_ready(), reps)
    return 2 * n ** 3 / min(times)  # a ceiling: noise only ever slows a run down

  return read


def _alternating_medians(fns: dict, reps: int) -> dict:
  """Median seconds of each function, called in turns (order swapped every round) so
  that the machine's drift hits them alike."""
  names, times = list(fns), {name: [] for name in fns}
  for name in names:
    fns[name]()
  for r in range(reps):
    for name in (names if r % 2 else names[::-1]):
      times[name].append(timed(fns[name]))
  return {name: statistics.median(t) for name, t in times.items()}


def _xla_against_torch(fn, args, reps: int) -> dict:
  """Median seconds of `fn` jitted by XLA on `args` and run by PyTorch on the same
  values, in turns."""
  import torch

  jitted, jargs = jax.jit(fn), jax.tree.map(jnp.asarray, args)
  targs = jax.tree.map(torch.from_numpy, args)
  return _alternating_medians({'xla_s': lambda: jitted(*jargs).block_until_ready(),
                               'torch_s': lambda: fn(*targs)}, reps)


# The three ways the step multiplies two matrices.
_MATMULS = {'a @ b': lambda a, b: a @ b, 'a @ b.T': lambda a, b: a @ b.T,
            'a.T @ b': lambda a, b: a.T @ b}


def step_products(shape: dict, dtype: str, reps: int = 15) -> dict:
  """Every weight-matrix product of the train step (each kernel's and the tied LM head's
  forward product, input gradient and weight gradient, in the layouts our model multiplies
  them; attention's batched products, 3% of the FLOPs, are left out), timed alone in
  XLA and in PyTorch (oneDNN) in turns on the same operands. Their sum is the time the
  step's matmuls need in each library; with XLA's, it bounds how fast our step can be."""
  tokens, h, vocab = shape['batch'] * shape['seq'], shape['hidden'], shape['vocab']
  rng = np.random.default_rng(0)
  normal = lambda *dims: rng.standard_normal(dims).astype(dtype)
  result, totals = {}, {'xla_s': 0.0, 'torch_s': 0.0, 'flops': 0.0}
  for name, k, n in (('qkv', h, 3 * h), ('attention_out', h, h), ('mlp_up', h, 4 * h),
                     ('mlp_down', 4 * h, h), ('lm_head', h, vocab)):
    x, dy = normal(tokens, k), normal(tokens, n)
    if name == 'lm_head':  # tied to the embedding table, stored [vocab, hidden]
      w, count = normal(n, k), 1
      products = {'forward': ('a @ b.T', x, w), 'input_grad': ('a @ b', dy, w),
                  'weight_grad': ('a.T @ b', dy, x)}
    else:
      w, count = normal(k, n), shape['layers']
      products = {'forward': ('a @ b', x, w), 'input_grad': ('a @ b.T', dy, w),
                  'weight_grad': ('a.T @ b', x, dy)}
    for kind, (matmul, a, b) in products.items():
      t = _xla_against_torch(_MATMULS[matmul], (a, b), reps)
      flops = 2 * tokens * k * n
      result[f'{name}.{kind}'] = {**t, 'count': count, 'flops': flops}
      for key, value in (*t.items(), ('flops', flops)):
        totals[key] += count * value
  return {'products': result, **totals}


def token_products(shape: dict, dtype: str, reps: int = 100) -> dict:
  """One generated token's weight products (batch 1): each layer's QKV, attention-out,
  MLP-up and MLP-down matrices, then the LM head, each input computed from the previous
  output as in decoding, in XLA and in PyTorch in turns. The per-token time our decoding
  cannot beat with XLA's matrix-vector products."""
  h, vocab = shape['hidden'], shape['vocab']
  rng = np.random.default_rng(0)
  normal = lambda *dims: (0.02 * rng.standard_normal(dims)).astype(dtype)
  layers = [(normal(h, 3 * h), normal(h, h), normal(h, 4 * h), normal(4 * h, h))
            for _ in range(shape['layers'])]
  embedding, x = normal(vocab, h), normal(1, h)

  def chain(x, layers, embedding):
    for qkv, out, up, down in layers:
      x = x + (x @ qkv)[:, :h] @ out
      x = x + (x @ up) @ down
    return x @ embedding.T

  t = _xla_against_torch(chain, (x, layers, embedding), reps)
  return {**t, 'weight_bytes': int(sum(a.nbytes for a in jax.tree.leaves((layers, embedding))))}


def bandwidth_probe(shape: tuple[int, int], dtype: str, reps: int = 10) -> Callable[[], float]:
  """A function reading the memory bandwidth now (bytes/s). A matrix-vector product does
  2 FLOPs per matrix element read: bandwidth-bound on any CPU, and the matrix is far
  larger than the last-level cache."""
  m = jax.random.normal(jax.random.key(0), shape, dtype)
  v = jax.random.normal(jax.random.key(1), (shape[1],), dtype)
  matvec = jax.jit(jnp.dot)
  matvec(m, v).block_until_ready()

  def read() -> float:
    _, times = median_time(lambda: matvec(m, v).block_until_ready(), reps)
    return m.size * m.dtype.itemsize / min(times)

  return read


# ------------------------------------------------------------------------------ our train step


def build(config, vocab: int, mesh):
  """The model and its jitted steps for one LM task, as `bloom_jax.train` builds them."""
  return runs.build(config, {'lm': tasks.TaskSpec('lm', task_types.LM, source=None)}, vocab, mesh)


def bench_config(shape: dict, **model):
  c = seed_config.get_config()
  c.tokenizer.vocab_size = shape['vocab']
  c.model.hidden_size = shape['hidden']
  c.model.n_head = shape['heads']
  c.model.n_layer = shape['layers']
  c.model.dropout = 0.0
  c.model.update(model)
  return c


def lm_batch(rng: np.random.Generator, vocab: int, batch: int, seq: int) -> dict:
  ids = rng.integers(4, vocab, size=(batch, seq + 1), dtype=np.int32)
  return {'lm': {'input_ids': ids[:, :-1], 'segment_ids': np.ones((batch, seq), np.int32),
                 'targets': ids[:, 1:], 'weights': np.ones((batch, seq), np.float32)}}


def abstract_batch(batch: dict, mesh) -> dict:
  spec = sharding.batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec), batch)


# The model-FLOP count behind MFU, shared with `bloom_jax.plan`'s projections.
train_flops_per_step = flops.train_flops_per_step


def bench_train(config, vocab: int, batch_size: int, seq: int, steps_: int, mesh,
                forward: bool = True, ceiling: Callable[[], float] | None = None) -> dict:
  """The compiled train step's median time; with `ceiling`, a matmul ceiling reading is
  taken before each timed step (`ceiling_readings`, paired with `step_times_s`)."""
  setup = build(config, vocab, mesh)
  host_batch = lm_batch(np.random.default_rng(0), vocab, batch_size, seq)
  batch = sharding.global_batch(host_batch, mesh)
  state = setup.init_train_state()
  # Stepping the executable that was analysed times exactly the program XLA counted
  # (and compiles once: jit's own cache does not see an explicit lower/compile).
  t0 = time.perf_counter()
  compiled = setup.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = {'state': state, 'losses': []}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch)
    jax.block_until_ready((holder['state'], metrics))
    holder['losses'].append(float(metrics['loss']))

  for _ in range(2):  # warm-up
    step()
  times, readings, faults = [], [], []
  for _ in range(steps_):
    if ceiling:
      readings.append(ceiling())
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times.append(timed(step))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
  tokens = batch_size * seq
  result = {'step_s': statistics.median(times), 'step_times_s': times,
            'page_faults_per_step': faults,
            'ceiling_readings': readings, 'tokens': tokens, 'compile_s': compile_s,
            'first_loss': holder['losses'][0], 'loss': holder['losses'][-1],
            'num_params': setup.model_config.num_params,
            'model_flops': train_flops_per_step(setup.model_config, batch_size, seq),
            'xla_flops': cost_flops(compiled), 'memory': memory_stats(compiled)}
  if forward:
    # The forward pass alone: a step near 3x this spends its time where the model FLOPs
    # say it should (backward = 2x forward); much more points at the update or overheads.
    counts = {'lm': jnp.sum(batch['lm']['weights'])}
    fwd = jax.jit(lambda params, batch: steps.multitask_loss(
        params, setup.graphdef, setup.abstract_state, setup.tasks, batch, None, counts)[0])
    params = holder['state']['params']
    result['forward_s'], _ = median_time(lambda: fwd(params, batch).block_until_ready(),
                                         max(steps_ // 2, 3), warmup=1)
  return result


# ------------------------------------------------------------------------------ compile, memory


def compile_seconds(shape: dict, layers: int, mesh) -> dict:
  config = bench_config(shape, n_layer=layers)
  setup = build(config, shape['vocab'], mesh)
  host = lm_batch(np.random.default_rng(0), shape['vocab'], shape['batch'], shape['seq'])
  args = (setup.abstract_train_state(), abstract_batch(host, mesh))
  t0 = time.perf_counter()
  lowered = setup.train_step.lower(*args)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {'lower_s': t1 - t0, 'compile_s': t2 - t1, 'total_s': t2 - t0}


def remat_memory(shape: dict, remat: str, mesh) -> dict:
  config = bench_config(shape, remat=remat)
  setup = build(config, shape['vocab'], mesh)
  host = lm_batch(np.random.default_rng(0), shape['vocab'], shape['long_batch'], shape['long_seq'])
  compiled = setup.train_step.lower(setup.abstract_train_state(),
                                    abstract_batch(host, mesh)).compile()
  return {**memory_stats(compiled), 'xla_flops': cost_flops(compiled)}
