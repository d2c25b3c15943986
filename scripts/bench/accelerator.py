"""--config: one config's own model (e.g. configs/bloom_560m.py on a GPU), its train step
timed for each (remat, attention kernel) variant against the measured matmul ceiling and
the device's datasheet peak."""

import copy
import importlib
import os
from collections.abc import Callable

import jax

import configs
from bloom_jax import sharding
from scripts.bench import probes
from scripts.bench.probes import fmt_rate

# Dense bf16 peak by the vendor's datasheet (FLOP/s), keyed by a substring of device_kind.
DATASHEET_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def load_config(spec: str):
  """'configs/NAME.py[:arg]' -> that module's get_config(arg)."""
  path, _, arg = spec.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  if not os.path.isfile(os.path.join(os.path.dirname(configs.__file__), name + '.py')):
    raise SystemExit(f'--config: no such config: configs/{name}.py')
  return importlib.import_module(f'configs.{name}').get_config(arg or None)


def bench_model_config(spec: str, variants: list[str], batch: int, seq: int, steps: int, log,
                       save: Callable[[dict], None]) -> dict:
  """The train step of config `spec` for each 'REMAT:ATTENTION_KERNEL' variant; the results
  so far are passed to `save` after every variant, since a later one may not finish in time."""
  base = load_config(spec)
  base.model.dropout = base.model.attention_dropout = 0.0
  vocab = base.model.get('vocab_size', 0) or base.tokenizer.vocab_size
  mesh = sharding.make_mesh(base.mesh)
  dtype = base.model.dtype
  device_kind = jax.devices()[0].device_kind
  peak = next((v for k, v in DATASHEET_BF16_FLOPS.items() if k in device_kind), None)
  accelerator = jax.default_backend() != 'cpu'
  log('ceilings')
  n = 8192 if accelerator else 1024
  ceiling = probes.matmul_probe(n, dtype)()
  bandwidth = probes.bandwidth_probe((16384, 16384) if accelerator else (4096, 4096), dtype)()
  results = {'config': spec, 'batch': batch, 'seq': seq,
             'device_kind': device_kind, 'devices': jax.device_count(), 'dtype': dtype,
             'jax': jax.__version__, 'matmul_flops_per_s': ceiling,
             'bandwidth_bytes_per_s': bandwidth, 'datasheet_flops_per_s': peak, 'variants': {}}
  print(f'{device_kind} x{jax.device_count()}, jax {jax.__version__}; matmul ceiling '
        f"{fmt_rate(ceiling, 'FLOP/s')} ({dtype}, n={n}), bandwidth {fmt_rate(bandwidth, 'B/s')}"
        + (f", datasheet {fmt_rate(peak, 'FLOP/s')}" if peak else ''), flush=True)
  for variant in variants:
    remat, kernel = variant.split(':')
    config = copy.deepcopy(base)
    config.model.remat, config.model.attention_kernel = remat, kernel
    log(f'train step, remat={remat}, attention={kernel}')
    try:
      r = probes.bench_train(config, vocab, batch, seq, steps, mesh, forward=False)
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
    save(results)
  return results
