"""The default run: the machine's ceilings, our train step and greedy decoding against
transformers' on the same shape and weights, compile time, remat memory and the input
pipeline (the numbered list in scripts/benchmark.py); the results with their targets, and
the table printed from them."""

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bloom_jax import config_lib, decoding, hf, host_memory, sharding
from bloom_jax.model import Bloom
from configs import default as default_config
from configs import seed as seed_config
from scripts.bench import probes
from scripts.bench.probes import fmt_rate

FULL = dict(hidden=512, heads=8, layers=6, vocab=10_000, batch=8, seq=128, steps=10,
            prompt=32, new_tokens=128, decode_reps=5, long_seq=2048, long_batch=1,
            compile_layers=(2, 24), matmul_n=2048, bandwidth_shape=(8192, 8192),
            input_batches=200)
QUICK = dict(hidden=64, heads=4, layers=2, vocab=512, batch=2, seq=32, steps=3,
             prompt=8, new_tokens=16, decode_reps=2, long_seq=256, long_batch=1,
             compile_layers=(2, 24), matmul_n=512, bandwidth_shape=(2048, 2048),
             input_batches=20)


# ------------------------------------------------------------------------------ train step


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
  host = probes.lm_batch(np.random.default_rng(0), shape['vocab'], shape['batch'],
                         shape['seq'])['lm']
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

  t, times = probes.median_time(step, shape['steps'], warmup=2)
  return {'step_s': t, 'step_times_s': times, 'loss': holder['loss'],
          'num_params': sum(p.numel() for p in model.parameters()),
          'attn_implementation': getattr(model.config, '_attn_implementation', None)}


# ------------------------------------------------------------------------------ decoding


def bench_decode(shape: dict, bandwidth: Callable[[], float]) -> dict:
  """Ours and transformers' greedy decoding, run in turns, each pair after a bandwidth
  reading (`bandwidth_readings`, paired with `ours_times_s` and `hf_times_s`)."""
  import torch
  import transformers

  config = probes.bench_config(shape)
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

  first_call_s = probes.timed(ours)
  # The prompt pass plus one token: subtracting it leaves the per-token loop alone.
  prefill = lambda: jax.block_until_ready(decoding.generate(
      graphdef, state, jnp.asarray(prompt), jnp.asarray(prompt_mask), max_new_tokens=1,
      eos_id=-1, pad_id=3, method='greedy')['tokens'])
  t_prefill, _ = probes.median_time(prefill, shape['decode_reps'], warmup=1)

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
    times_ours.append(probes.timed(ours))
    times_theirs.append(probes.timed(theirs))
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


# ------------------------------------------------------------------------------ input pipeline


def bench_input(num_batches: int) -> dict:
  from bloom_jax.data import pipeline

  config = default_config.get_config()
  t0 = time.perf_counter()
  pipe = pipeline.Pipeline(config)
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


# ------------------------------------------------------------------------------ the run


def measure(shape: dict, quick: bool, log: Callable[[str], None]) -> dict:
  """Every measurement of the run, as the JSON's `details` holds them."""
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
         'load_avg_at_start': os.getloadavg(), 'quick': quick, 'dtype': dtype,
         'host_huge_pages': host_memory.huge_pages_requested()}

  # The machine's speed drifts within minutes: each timed step and decoding run is judged
  # against a ceiling reading taken just before it (see scripts/benchmark.py's docstring).
  log('ceilings')
  matmul_ceiling = probes.matmul_probe(shape['matmul_n'], dtype)
  bandwidth_ceiling = probes.bandwidth_probe(shape['bandwidth_shape'], dtype)
  log('products alone, XLA and PyTorch')
  products, token = probes.step_products(shape, dtype), probes.token_products(shape, dtype)
  log('our train step')
  ours = probes.bench_train(probes.bench_config(shape), shape['vocab'], shape['batch'],
                            shape['seq'], shape['steps'], mesh, ceiling=matmul_ceiling)
  log('transformers train step')
  theirs = bench_hf_train(shape)
  log('decoding')
  dec = bench_decode(shape, bandwidth_ceiling)
  log('compile time')
  compiles = {n: probes.compile_seconds(shape, n, mesh) for n in shape['compile_layers']}
  log('remat memory')
  memory = {r: probes.remat_memory(shape, r, mesh) for r in ('none', 'full')}
  log('input pipeline')
  inputs = bench_input(shape['input_batches'])
  env['load_avg_at_end'] = os.getloadavg()
  return {'shape': {k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()},
          'env': env, 'step_products': products, 'token_products': token,
          'train': ours, 'hf_train': theirs, 'decode': dec,
          'compile': {str(k): v for k, v in compiles.items()},
          'remat_memory': memory, 'input': inputs}


def summarize(shape: dict, details: dict) -> dict:
  """The run's results (the JSON): ratios, MFU and fractions of the ceilings derived from
  `details`, which they carry, and whether each target is met."""
  products, token = details['step_products'], details['token_products']
  ours, theirs, dec = details['train'], details['hf_train'], details['decode']
  memory, inputs = details['remat_memory'], details['input']
  # The JSON's keys are strings: str() of each layer count names its compile time.
  few, many = map(str, shape['compile_layers'])
  compiles = details['compile']
  flops_samples, bandwidth_samples = ours['ceiling_readings'], dec['bandwidth_readings']
  flops_ceiling, bandwidth = max(flops_samples), max(bandwidth_samples)
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
      'details': details,
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
  return results


def table(shape: dict, results: dict) -> list[tuple[str, str]]:
  """The printed table, a (name, value) row per line, read from `results`."""
  details = results['details']
  env, products, token = details['env'], details['step_products'], details['token_products']
  ours, theirs, dec = details['train'], details['hf_train'], details['decode']
  memory, inputs = details['remat_memory'], details['input']
  few, many = map(str, shape['compile_layers'])
  compiles = details['compile']
  cores, dtype = env['cores'], env['dtype']
  flops_ceiling, flops_samples = (results['matmul_flops_per_s'],
                                  results['matmul_flops_per_s_readings'])
  bandwidth, bandwidth_samples = (results['bandwidth_bytes_per_s'],
                                  results['bandwidth_bytes_per_s_readings'])
  train_tps, hf_tps = results['train_tokens_per_s'], results['hf_train_tokens_per_s']
  decode_tps, hf_decode_tps = results['decode_tokens_per_s'], results['hf_decode_tokens_per_s']
  achieved = results['achieved_model_flops_per_s']
  floor_tps = results['decode_bandwidth_floor_tokens_per_s']
  loop_fraction = results['decode_loop_fraction_of_bandwidth_floor']
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
  return rows
