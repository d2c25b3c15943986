r"""Throughput, compile time and memory of bloom_jax against this machine and transformers.

    python scripts/benchmark.py --json /tmp/bench.json   # full run (~3 min on 2 cores)
    python scripts/benchmark.py --quick                  # tiny shapes, a smoke test (~1.5 min)

One run measures, on one machine:
  1. ceilings: dense matmul FLOP/s (a large jnp.dot in the compute dtype) and streaming
     memory bandwidth (a large matrix-vector product, which reads the matrix once);
  2. the jitted train step (forward, backward, AdamW) for configs/seed.py's model shape,
     one LM task at batch 8 x 128 tokens: tokens/s and model-FLOPs utilisation,
        model FLOPs / step = 6 * params * tokens + 12 * layers * hidden * seq * tokens
     (params include the tied embedding, whose LM-head matmul is counted once);
  3. transformers' BloomForCausalLM (PyTorch) on the same shape, batch and optimizer;
  4. batch-1 greedy decoding of 128 new tokens after a 32-token prompt, ours (KV cache)
     against transformers' generate(use_cache=True) on the same weights, and ours against
     the bandwidth floor: every parameter byte is read once per token;
  5. train-step compile time (lower + compile) at 2 and at 24 layers;
  6. the compiled peak memory of a long-sequence step with and without remat, from
     XLA's memory_analysis() (CPU has no allocator statistics);
  7. the input pipeline's batches/s (configs/default.py, cached synthetic data);
  8. the products alone, in XLA and in PyTorch in turns: the step's weight-matrix
     products (forward, input and weight gradients) and one generated token's chain of
     matrix-vector products. Our step and our decoding cannot be faster than XLA's
     products, which bounds the ratios against transformers, MFU and the fraction of the
     bandwidth floor on this machine ("bounds" in the table).

Every timing is the median of repeated runs after a warm-up; wall clock only. A ceiling
reading is the best of a few repetitions. The machine's speed drifts within minutes, so
each timed train step and each decoding run is paired with a ceiling reading taken just
before it: MFU and the fraction of the bandwidth floor are medians of those pairs, and
the decode ratio against transformers a median of runs taken back to back. The fractions
against the run's best reading are reported next to them.
"""

import argparse
import copy
import dataclasses
import importlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# First, as `python -m bloom_jax.train` does: start again with huge pages for XLA's large
# host buffers, before anything else is imported (bloom_jax/host_memory.py).
from bloom_jax import host_memory  # noqa: E402, I001

if __name__ == '__main__':
  host_memory.restart_with_huge_pages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bloom_jax import decoding, hf, sharding, steps, train  # noqa: E402
from bloom_jax.model import Bloom  # noqa: E402
from configs import default as default_config  # noqa: E402
from configs import seed as seed_config  # noqa: E402

FULL = dict(hidden=512, heads=8, layers=6, vocab=10_000, batch=8, seq=128, steps=10,
            prompt=32, new_tokens=128, decode_reps=5, long_seq=2048, long_batch=1,
            compile_layers=(2, 24), matmul_n=2048, bandwidth_shape=(8192, 8192),
            input_batches=200)
QUICK = dict(hidden=64, heads=4, layers=2, vocab=512, batch=2, seq=32, steps=3,
             prompt=8, new_tokens=16, decode_reps=2, long_seq=256, long_batch=1,
             compile_layers=(2, 24), matmul_n=512, bandwidth_shape=(2048, 2048),
             input_batches=20)


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


@dataclasses.dataclass(frozen=True)
class _Task:
  head: str = 'lm'
  loss_weight: float = 1.0
  num_labels: int = 0


@dataclasses.dataclass(frozen=True)
class _Tokenizer:
  vocab_size: int


@dataclasses.dataclass(frozen=True)
class _Pipe:
  """What `train.build` reads of a data pipeline: the tasks and the vocabulary size."""

  tasks: dict
  tokenizer: _Tokenizer


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
  return {'lm': {'input_ids': ids[:, :-1], 'attention_mask': np.ones((batch, seq), np.int32),
                 'targets': ids[:, 1:], 'weights': np.ones((batch, seq), np.float32)}}


def abstract_batch(batch: dict, mesh) -> dict:
  spec = sharding.batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec), batch)


def build(config, vocab: int, mesh):
  pipe = _Pipe({'lm': _Task()}, _Tokenizer(vocab))
  return train.build(config, pipe, mesh)


def train_flops_per_step(cfg, batch: int, seq: int) -> float:
  tokens = batch * seq
  return 6 * cfg.num_params * tokens + 12 * cfg.n_layer * cfg.hidden_size * seq * tokens


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


def bench_hf_train(shape: dict) -> dict:
  import torch
  import transformers

  cfg = transformers.BloomConfig(vocab_size=shape['vocab'], hidden_size=shape['hidden'],
                                 n_layer=shape['layers'], n_head=shape['heads'],
                                 hidden_dropout=0.0, attention_dropout=0.0)
  torch.manual_seed(0)
  model = transformers.BloomForCausalLM(cfg).train()
  opt_cfg = seed_config.get_config().optimizer
  # The same update as ours: global-norm clipping, then AdamW with our betas and eps.
  optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg.learning_rate,
                                betas=(opt_cfg.b1, opt_cfg.b2), eps=1e-8,
                                weight_decay=opt_cfg.weight_decay)
  host = lm_batch(np.random.default_rng(0), shape['vocab'], shape['batch'], shape['seq'])['lm']
  ids = torch.from_numpy(host['input_ids']).long()
  mask = torch.from_numpy(host['attention_mask']).long()
  holder = {}

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.clip_norm)
    optimizer.step()
    holder['loss'] = loss.item()

  t, times = median_time(step, shape['steps'], warmup=2)
  return {'step_s': t, 'step_times_s': times, 'loss': holder['loss'],
          'num_params': sum(p.numel() for p in model.parameters()),
          'attn_implementation': getattr(model.config, '_attn_implementation', None)}


# ------------------------------------------------------------------------------ decoding


def bench_decode(shape: dict, bandwidth: Callable[[], float]) -> dict:
  """Ours and transformers' greedy decoding, run in turns, each pair after a bandwidth
  reading (`bandwidth_readings`, paired with `ours_times_s` and `hf_times_s`)."""
  import torch
  import transformers

  config = bench_config(shape)
  from bloom_jax import config_lib
  cfg = config_lib.model_config(config, vocab_size=shape['vocab'])
  model = Bloom(cfg, rngs=nnx.Rngs(0))
  # Unstacked once, as a serving process would (transformers' layers are separate already);
  # the one-off copy is timed and reported on its own.
  t0 = time.perf_counter()
  graphdef, state = decoding.unstacked(*nnx.split(model))
  jax.block_until_ready(state)
  unstack_s = time.perf_counter() - t0
  rng = np.random.default_rng(1)
  prompt = rng.integers(4, shape['vocab'], size=(1, shape['prompt']), dtype=np.int32)
  prompt_mask = np.ones_like(prompt)
  new = shape['new_tokens']
  # eos_id -1 never matches, so both sides generate exactly `new` tokens.
  run = lambda: decoding.generate(graphdef, state, jnp.asarray(prompt), jnp.asarray(prompt_mask),
                                  max_new_tokens=new, eos_id=-1, pad_id=3, method='greedy')
  holder = {}

  def ours():
    out = run()
    holder['ours'] = np.asarray(jax.block_until_ready(out['tokens']))[0]

  first_call_s = timed(ours)
  # The prompt pass plus one token: subtracting it leaves the per-token loop alone.
  prefill = lambda: jax.block_until_ready(decoding.generate(
      graphdef, state, jnp.asarray(prompt), jnp.asarray(prompt_mask), max_new_tokens=1,
      eos_id=-1, pad_id=3, method='greedy')['tokens'])
  t_prefill, _ = median_time(prefill, shape['decode_reps'], warmup=1)

  with tempfile.TemporaryDirectory() as tmp:
    hf.save(model, tmp)
    theirs_model = transformers.BloomForCausalLM.from_pretrained(tmp).eval()
  ids = torch.from_numpy(prompt).long()
  mask = torch.from_numpy(prompt_mask).long()

  def theirs():
    with torch.inference_mode():
      out = theirs_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, use_cache=True,
                                  pad_token_id=3)
    holder['theirs'] = out[0, ids.shape[1]:].numpy()

  theirs()  # warm-up (ours was warmed by its first call above)
  readings, times_ours, times_theirs = [], [], []
  for _ in range(shape['decode_reps']):
    readings.append(bandwidth())
    times_ours.append(timed(ours))
    times_theirs.append(timed(theirs))
  t_ours, t_theirs = statistics.median(times_ours), statistics.median(times_theirs)
  a, b = holder['ours'], holder['theirs']
  differ = a != b if len(a) == len(b) else np.ones(1, bool)
  agree = int(np.argmax(differ)) if np.any(differ) else len(a)
  return {'new_tokens': new, 'prompt': shape['prompt'], 'ours_s': t_ours,
          'ours_times_s': times_ours, 'bandwidth_readings': readings,
          'ours_prefill_s': t_prefill,
          # None when timing noise swamps the loop (tiny --quick shapes).
          'ours_per_token_s': ((t_ours - t_prefill) / (new - 1)
                               if new > 1 and t_ours > t_prefill else None),
          'ours_first_call_s': first_call_s, 'ours_unstack_once_s': unstack_s, 'hf_s': t_theirs,
          'hf_times_s': times_theirs, 'hf_generated': int(len(b)),
          'greedy_tokens_identical_prefix': agree, 'hf_dtype': str(theirs_model.dtype),
          'param_bytes': int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))),
          'kv_cache_bytes_at_end': int(2 * cfg.n_layer * (shape['prompt'] + new) * cfg.hidden_size
                                       * jnp.dtype(cfg.dtype).itemsize)}


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


# ------------------------------------------------------------------------------ input pipeline


def bench_input(num_batches: int) -> dict:
  from bloom_jax import data as data_lib

  config = default_config.get_config()
  t0 = time.perf_counter()
  pipe = data_lib.Pipeline(config)
  setup_s = time.perf_counter() - t0
  it = pipe.train_iterator()
  next(it)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
  elapsed = time.perf_counter() - t0
  rows = sum(len(b['input_ids']) for b in batch.values())
  return {'batches_per_s': num_batches / elapsed, 'pipeline_setup_s': setup_s,
          'rows_per_batch': rows, 'batch_size_config': int(config.data.batch_size)}


# ------------------------------------------------------------------------------ one config


# Dense bf16 peak by the vendor's datasheet (FLOP/s), keyed by a substring of device_kind.
DATASHEET_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def load_config(spec: str):
  """'configs/NAME.py[:arg]' -> that module's get_config(arg)."""
  path, _, arg = spec.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  if not os.path.isfile(os.path.join(ROOT, 'configs', name + '.py')):
    raise SystemExit(f'--config: no such config: configs/{name}.py')
  return importlib.import_module(f'configs.{name}').get_config(arg or None)


def bench_model_config(args, log) -> dict:
  """The train step of one config (e.g. configs/bloom_560m.py on a GPU) for each
  (remat, attention kernel) variant, against the measured matmul ceiling."""
  base = load_config(args.config)
  base.model.dropout = base.model.attention_dropout = 0.0
  vocab = base.model.get('vocab_size', 0) or base.tokenizer.vocab_size
  mesh = sharding.make_mesh(base.mesh)
  dtype = base.model.dtype
  device_kind = jax.devices()[0].device_kind
  peak = next((v for k, v in DATASHEET_BF16_FLOPS.items() if k in device_kind), None)
  accelerator = jax.default_backend() != 'cpu'
  log('ceilings')
  n = 8192 if accelerator else 1024
  ceiling = matmul_probe(n, dtype)()
  bandwidth = bandwidth_probe((16384, 16384) if accelerator else (4096, 4096), dtype)()
  results = {'config': args.config, 'batch': args.batch, 'seq': args.seq,
             'device_kind': device_kind, 'devices': jax.device_count(), 'dtype': dtype,
             'jax': jax.__version__, 'matmul_flops_per_s': ceiling,
             'bandwidth_bytes_per_s': bandwidth, 'datasheet_flops_per_s': peak, 'variants': {}}
  print(f'{device_kind} x{jax.device_count()}, jax {jax.__version__}; matmul ceiling '
        f"{fmt_rate(ceiling, 'FLOP/s')} ({dtype}, n={n}), bandwidth {fmt_rate(bandwidth, 'B/s')}"
        + (f", datasheet {fmt_rate(peak, 'FLOP/s')}" if peak else ''), flush=True)
  for variant in args.variants.split(','):
    remat, kernel = variant.split(':')
    config = copy.deepcopy(base)
    config.model.remat, config.model.attention_kernel = remat, kernel
    log(f'train step, remat={remat}, attention={kernel}')
    try:
      r = bench_train(config, vocab, args.batch, args.seq, args.steps or 10, mesh,
                      forward=False)
    except Exception as e:  # noqa: BLE001 - one variant failing (e.g. out of memory) is a result
      results['variants'][variant] = {'error': f'{type(e).__name__}: {e}'[:2000]}
      print(f'{variant:<14} failed: {type(e).__name__}: {str(e)[:300]}', flush=True)
      continue
    achieved = r['model_flops'] / r['step_s']
    r.update(tokens_per_s=r['tokens'] / r['step_s'], achieved_flops_per_s=achieved,
             mfu_vs_measured_ceiling=achieved / ceiling,
             mfu_vs_datasheet=achieved / peak if peak else None)
    results['variants'][variant] = r
    print(f"{variant:<14} {r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:>10,.0f} tokens/s  "
          f"MFU {r['mfu_vs_measured_ceiling']:.1%} of measured"
          + (f", {r['mfu_vs_datasheet']:.1%} of datasheet" if peak else '')
          + f"  compile {r['compile_s']:.0f} s  peak {r['memory']['peak_bytes'] / 2**30:.1f} GiB"
          f"  loss {r['first_loss']:.4f} -> {r['loss']:.4f}", flush=True)
    if args.json:  # after every variant: a later one may not finish in time
      with open(args.json, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=2, default=float)
  return results


# ------------------------------------------------------------------------------ report


def fmt_rate(x: float, unit: str) -> str:
  for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.2f} {prefix}{unit}'
  return f'{x:.2f} {unit}'


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--json', default='', help='also write the results to this file')
  parser.add_argument('--quick', action='store_true', help='tiny shapes: a smoke test')
  parser.add_argument('--steps', type=int, default=0,
                      help='timed train steps per framework (default 10, quick 3)')
  parser.add_argument('--config', default='',
                      help='instead of the comparison: time this config\'s own model '
                           '(configs/NAME.py[:arg]) for each of --variants, one LM task')
  parser.add_argument('--batch', type=int, default=8, help='with --config: rows per step')
  parser.add_argument('--seq', type=int, default=2048, help='with --config: tokens per row')
  parser.add_argument('--variants', default='full:einsum,full:cudnn,none:cudnn,none:einsum',
                      help='with --config: comma-separated REMAT:ATTENTION_KERNEL pairs')
  args = parser.parse_args(argv)
  started = time.perf_counter()
  log = lambda msg: print(f'[{time.perf_counter() - started:6.1f}s] {msg}', file=sys.stderr,
                          flush=True)
  if args.config:
    if not all(v.count(':') == 1 for v in args.variants.split(',')):
      parser.error(f'--variants: expected REMAT:ATTENTION_KERNEL pairs, got {args.variants!r}')
    return bench_model_config(args, log)
  shape = dict(QUICK if args.quick else FULL)
  if args.steps:
    shape['steps'] = args.steps

  import torch
  cores = len(os.sched_getaffinity(0))
  # XLA's CPU backend runs its intra-op pool on every core; torch gets the same count.
  torch.set_num_threads(cores)
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  dtype = seed_config.get_config().model.dtype
  env = {'jax': jax.__version__, 'torch': torch.__version__,
         'transformers': __import__('transformers').__version__,
         'backend': jax.default_backend(), 'devices': jax.device_count(), 'cores': cores,
         'torch_threads': torch.get_num_threads(),
         'cpu': platform.processor() or platform.machine(),
         'compilation_cache_dir': jax.config.jax_compilation_cache_dir,
         'load_avg_at_start': os.getloadavg(), 'quick': args.quick, 'dtype': dtype,
         'host_huge_pages': host_memory.huge_pages_requested()}

  # The machine's speed drifts within minutes: each timed step and decoding run is judged
  # against a ceiling reading taken just before it (see the module docstring).
  log('ceilings')
  matmul_ceiling = matmul_probe(shape['matmul_n'], dtype)
  bandwidth_ceiling = bandwidth_probe(shape['bandwidth_shape'], dtype)
  log('products alone, XLA and PyTorch')
  products, token = step_products(shape, dtype), token_products(shape, dtype)
  log('our train step')
  ours = bench_train(bench_config(shape), shape['vocab'], shape['batch'], shape['seq'],
                     shape['steps'], mesh, ceiling=matmul_ceiling)
  log('transformers train step')
  theirs = bench_hf_train(shape)
  log('decoding')
  dec = bench_decode(shape, bandwidth_ceiling)
  flops_samples, bandwidth_samples = ours['ceiling_readings'], dec['bandwidth_readings']
  flops_ceiling, bandwidth = max(flops_samples), max(bandwidth_samples)
  log('compile time')
  compiles = {n: compile_seconds(shape, n, mesh) for n in shape['compile_layers']}
  log('remat memory')
  memory = {r: remat_memory(shape, r, mesh) for r in ('none', 'full')}
  log('input pipeline')
  inputs = bench_input(shape['input_batches'])
  env['load_avg_at_end'] = os.getloadavg()

  tokens = ours['tokens']
  train_tps = tokens / ours['step_s']
  hf_tps = tokens / theirs['step_s']
  achieved = ours['model_flops'] / ours['step_s']
  paired_mfu = statistics.median(ours['model_flops'] / t / c for t, c in zip(
      ours['step_times_s'], flops_samples, strict=True))
  decode_tps = dec['new_tokens'] / dec['ours_s']
  hf_decode_tps = dec['new_tokens'] / dec['hf_s']
  bytes_per_token = dec['param_bytes'] + dec['kv_cache_bytes_at_end']
  floor_tps = bandwidth / bytes_per_token
  paired_floor_fraction = statistics.median(
      dec['new_tokens'] * bytes_per_token / b / t
      for b, t in zip(bandwidth_samples, dec['ours_times_s'], strict=True))
  paired_decode_ratio = statistics.median(
      h / o for h, o in zip(dec['hf_times_s'], dec['ours_times_s'], strict=True))
  loop_fraction = (bytes_per_token / statistics.median(bandwidth_samples)
                   / dec['ours_per_token_s'] if dec['ours_per_token_s'] else None)
  few, many = shape['compile_layers']
  attention_flops = 12 * shape['layers'] * shape['hidden'] * shape['seq'] * tokens
  vocab_flops = 6 * shape['vocab'] * shape['hidden'] * tokens
  results = {
      'matmul_flops_per_s': flops_ceiling,
      'matmul_flops_per_s_readings': flops_samples,
      'bandwidth_bytes_per_s': bandwidth,
      'bandwidth_bytes_per_s_readings': bandwidth_samples,
      'step_products_xla_s': products['xla_s'],
      'step_products_torch_s': products['torch_s'],
      # How fast our step could be against transformers' if it did nothing but XLA's
      # products; the same for one generated token.
      'train_ratio_bound_from_xla_products': theirs['step_s'] / products['xla_s'],
      'mfu_bound_from_xla_products': (ours['model_flops'] / products['xla_s']
                                      / statistics.median(flops_samples)),
      'token_products_xla_s': token['xla_s'],
      'token_products_torch_s': token['torch_s'],
      'decode_ratio_bound_from_xla_products': dec['hf_s'] / (dec['new_tokens'] * token['xla_s']),
      'decode_floor_fraction_bound_from_xla_products': (
          bytes_per_token / statistics.median(bandwidth_samples) / token['xla_s']),
      'decode_loop_time_over_token_products': (dec['ours_per_token_s'] / token['xla_s']
                                               if dec['ours_per_token_s'] else None),
      'train_tokens_per_s': train_tps,
      'train_steps_per_s': 1.0 / ours['step_s'],
      'train_page_faults_per_step': ours['page_faults_per_step'],
      'hf_train_tokens_per_s': hf_tps,
      'train_ratio_vs_hf': train_tps / hf_tps,
      # Best steps on both sides: PyTorch's spinning OpenMP threads slow down far more
      # than XLA's when another process shares the cores, which skews the medians.
      'train_ratio_vs_hf_best_steps': min(theirs['step_times_s']) / min(ours['step_times_s']),
      'model_flops_per_step': ours['model_flops'],
      'xla_flops_per_step': ours['xla_flops'],
      'achieved_model_flops_per_s': achieved,
      'mfu_vs_measured_ceiling': paired_mfu,
      'mfu_vs_best_ceiling_reading': achieved / flops_ceiling,
      'xla_flops_utilisation': (ours['xla_flops'] / ours['step_s'] / flops_ceiling
                                if ours['xla_flops'] else None),
      'attention_share_of_model_flops': attention_flops / ours['model_flops'],
      'vocab_projection_share_of_model_flops': vocab_flops / ours['model_flops'],
      'decode_tokens_per_s': decode_tps,
      'hf_decode_tokens_per_s': hf_decode_tps,
      'decode_ratio_vs_hf': paired_decode_ratio,
      'decode_ratio_vs_hf_of_medians': decode_tps / hf_decode_tps,
      'decode_ratio_vs_hf_best_runs': min(dec['hf_times_s']) / min(dec['ours_times_s']),
      'decode_bandwidth_floor_tokens_per_s': floor_tps,
      'decode_fraction_of_bandwidth_floor': paired_floor_fraction,
      'decode_fraction_of_best_bandwidth_floor': decode_tps / floor_tps,
      'decode_loop_fraction_of_bandwidth_floor': loop_fraction,
      f'compile_s_{few}_layers': compiles[few]['total_s'],
      f'compile_s_{many}_layers': compiles[many]['total_s'],
      'compile_ratio': compiles[many]['total_s'] / compiles[few]['total_s'],
      'remat_peak_memory_reduction': (1 - memory['full']['peak_bytes']
                                      / memory['none']['peak_bytes']),
      'remat_temp_memory_reduction': (1 - memory['full']['temp_size_in_bytes']
                                      / max(memory['none']['temp_size_in_bytes'], 1)),
      'input_batches_per_s': inputs['batches_per_s'],
      'details': {'shape': {k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()},
                  'env': env, 'step_products': products, 'token_products': token,
                  'train': ours, 'hf_train': theirs, 'decode': dec,
                  'compile': {str(k): v for k, v in compiles.items()},
                  'remat_memory': memory, 'input': inputs},
  }
  targets = [
      ('train step >= 1.3x transformers tokens/s', results['train_ratio_vs_hf'] >= 1.3),
      ('train step >= 70% of matmul ceiling (MFU)', results['mfu_vs_measured_ceiling'] >= 0.7),
      ('decoding >= 3x transformers tokens/s', results['decode_ratio_vs_hf'] >= 3.0),
      ('decoding >= 60% of bandwidth floor', results['decode_fraction_of_bandwidth_floor'] >= 0.6),
      (f'{many}-layer compile <= 1.5x {few}-layer', results['compile_ratio'] <= 1.5),
      ('remat cuts long-sequence peak memory >= 40%',
       results['remat_peak_memory_reduction'] >= 0.4),
  ]
  results['targets'] = {name: bool(ok) for name, ok in targets}
  log('done')

  mib = lambda b: f'{b / 2 ** 20:.1f} MiB'
  rows = [
      ('machine', f"{cores} cores, jax {env['jax']} ({env['backend']}), torch {env['torch']} "
                  f"({env['torch_threads']} threads), transformers {env['transformers']}"),
      ('host malloc', f'transparent huge pages for large blocks ({host_memory.TUNABLE}=1)'
                      if env['host_huge_pages'] else "glibc's default (4 KiB pages)"),
      ('matmul ceiling', f"{fmt_rate(flops_ceiling, 'FLOP/s')} best ({dtype}, "
                         f"n={shape['matmul_n']}; readings, one before each step: "
                         f"{', '.join(fmt_rate(x, '') for x in flops_samples)})"),
      ('step products alone', f"XLA {products['xla_s'] * 1e3:.0f} ms "
                              f"({fmt_rate(products['flops'] / products['xla_s'], 'FLOP/s')}), "
                              f"PyTorch {products['torch_s'] * 1e3:.0f} ms "
                              f"({fmt_rate(products['flops'] / products['torch_s'], 'FLOP/s')}): "
                              f"the step's {sum(p['count'] for p in products['products'].values())}"
                              f" weight-matrix products, {products['flops'] / 1e9:.1f} GFLOP"),
      ('token products alone', f"XLA {token['xla_s'] * 1e3:.2f} ms "
                               f"({fmt_rate(token['weight_bytes'] / token['xla_s'], 'B/s')}), "
                               f"PyTorch {token['torch_s'] * 1e3:.2f} ms "
                               f"({fmt_rate(token['weight_bytes'] / token['torch_s'], 'B/s')}): "
                               f"one generated token's weight products"),
      ('bandwidth ceiling', f"{fmt_rate(bandwidth, 'B/s')} best (matvec "
                            f"{shape['bandwidth_shape']}; readings, one before each decoding "
                            f"run: {', '.join(fmt_rate(x, '') for x in bandwidth_samples)})"),
      ('train shape', f"hidden {shape['hidden']}, {shape['layers']} layers, "
                      f"{shape['heads']} heads, "
                      f"vocab {shape['vocab']}, batch {shape['batch']} x {shape['seq']}, "
                      f"{ours['num_params'] / 1e6:.2f}M params"),
      ('train step (ours)', f"{ours['step_s'] * 1e3:.1f} ms, {train_tps:,.0f} tokens/s, "
                            f"{1 / ours['step_s']:.2f} steps/s; host page faults per step: "
                            f"median {statistics.median(ours['page_faults_per_step']):,.0f}, "
                            f"max {max(ours['page_faults_per_step']):,}"),
      ('forward pass (ours)', f"{ours['forward_s'] * 1e3:.1f} ms "
                              f"(step = {ours['step_s'] / ours['forward_s']:.2f}x forward)"),
      ('train step (transformers)', f"{theirs['step_s'] * 1e3:.1f} ms, {hf_tps:,.0f} tokens/s"),
      ('train ratio ours/HF', f"{results['train_ratio_vs_hf']:.2f}x (best steps: "
                              f"{results['train_ratio_vs_hf_best_steps']:.2f}x)"),
      ('train bounds', f"train ratio {results['train_ratio_bound_from_xla_products']:.2f}x, "
                       f"MFU {results['mfu_bound_from_xla_products']:.1%} (a step that did "
                       f"nothing but its weight-matrix products)"),
      ('model FLOPs/step', f"{ours['model_flops'] / 1e9:.2f} G (XLA counts "
                           f"{(ours['xla_flops'] or 0) / 1e9:.2f} G)"),
      ('MFU vs measured ceiling', f"{results['mfu_vs_measured_ceiling']:.1%} (median of "
                                  f"steps against their readings; {fmt_rate(achieved, 'FLOP/s')}"
                                  f" = {results['mfu_vs_best_ceiling_reading']:.1%} of the best)"),
      ('decode (ours)', f"{decode_tps:,.1f} tokens/s ({dec['ours_s']:.3f} s for "
                        f"{dec['new_tokens']} tokens)"),
      ('decode (transformers)', f"{hf_decode_tps:,.1f} tokens/s ({dec['hf_s']:.3f} s)"),
      ('decode ratio ours/HF', f"{results['decode_ratio_vs_hf']:.2f}x (median of runs back "
                               f"to back; best runs: "
                               f"{results['decode_ratio_vs_hf_best_runs']:.2f}x); greedy tokens "
                               f"agree for "
                               f"the first {dec['greedy_tokens_identical_prefix']}"),
      ('decode bounds', f"decode ratio {results['decode_ratio_bound_from_xla_products']:.2f}x, "
                        f"{results['decode_floor_fraction_bound_from_xla_products']:.1%} of the "
                        f"floor (decoding that did nothing but its weight products); our loop "
                        f"takes {results['decode_loop_time_over_token_products'] or 0:.2f}x "
                        f"their time per token"),
      ('decode vs bandwidth floor', f"{results['decode_fraction_of_bandwidth_floor']:.1%} "
                                    f"(median of runs against their readings; "
                                    f"{results['decode_fraction_of_best_bandwidth_floor']:.1%}"
                                    f" of the best, {floor_tps:,.0f} tokens/s); loop alone "
                                    f"{loop_fraction or 0:.1%}, "
                                    f"prefill {dec['ours_prefill_s'] * 1e3:.1f} ms "
                                    f"(layers unstacked once before: "
                                    f"{dec['ours_unstack_once_s'] * 1e3:.0f} ms)"),
      (f'compile {few} / {many} layers', f"{compiles[few]['total_s']:.2f} s / "
                                         f"{compiles[many]['total_s']:.2f} s "
                                         f"({results['compile_ratio']:.2f}x)"),
      (f"peak memory, {shape['long_batch']}x{shape['long_seq']} tokens",
       f"remat none {mib(memory['none']['peak_bytes'])}, full {mib(memory['full']['peak_bytes'])} "
       f"(-{results['remat_peak_memory_reduction']:.1%}; temp "
       f"-{results['remat_temp_memory_reduction']:.1%})"),
      ('input pipeline', f"{inputs['batches_per_s']:,.0f} batches/s "
                         f"({inputs['rows_per_batch']} rows, configs/default.py) vs "
                         f"{1 / ours['step_s']:.2f} train steps/s"),
  ]
  rows.append(('load average start/end', f"{env['load_avg_at_start'][0]:.2f} / "
                                         f"{env['load_avg_at_end'][0]:.2f} (1 min)"))
  width = max(len(k) for k, _ in rows)
  print('\n'.join(f'{k:<{width}}  {v}' for k, v in rows))
  print('\ntargets:')
  for name, ok in targets:
    print(f"  [{'met' if ok else 'MISSED'}] {name}")
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2, default=float)
  return results


if __name__ == '__main__':
  main()
