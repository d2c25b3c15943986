r"""Throughput, compile time and memory of bloom_jax against this machine and transformers.

    python scripts/benchmark.py --json /tmp/bench.json   # full run (~3 min on 2 cores)
    python scripts/benchmark.py --quick                  # tiny shapes, a smoke test (~1.5 min)
    python scripts/benchmark.py --mixture --json F       # the real mixture: packing, bags, pooling

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

`--mixture` instead times configs/real_multitask.py's train step on real batches (data.dir
or $BLOOM_JAX_DATA) with packed rows, with one example per row, with bags of n-grams
beside the classifiers' heads, with max pooling in place of attention pooling and with a
next-token loss on the copying task's source, in turns: examples per second of every task,
non-padding tokens per second, the bags' and attention pooling's step time against the
step without them and the source loss's against the recipe's (scripts/bench/mixture.py).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# First, as the `python -m bloom_jax.PROGRAM` entry points do (bloom_jax/cli.py): TensorFlow's
# defaults, and a restart with huge pages for XLA's large host buffers, before anything
# heavy is imported (bloom_jax/host_memory.py).
from bloom_jax import cli  # noqa: E402, I001

if __name__ == '__main__':
  cli.set_up_process()

from scripts.bench import accelerator, comparison, mixture  # noqa: E402


def write_json(path: str, results: dict) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2, default=float)


def print_table(rows: list[tuple[str, str]]) -> None:
  width = max(len(k) for k, _ in rows)
  print('\n'.join(f'{k:<{width}}  {v}' for k, v in rows))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--json', default='', help='also write the results to this file')
  parser.add_argument('--quick', action='store_true', help='tiny shapes: a smoke test')
  parser.add_argument('--steps', type=int, default=0,
                      help='timed train steps per framework (default 10, quick 3)')
  parser.add_argument('--mixture', action='store_true',
                      help='instead of the comparison: the real mixture (packing, bags, pooling)')
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
  save = (lambda results: write_json(args.json, results)) if args.json else (lambda _: None)
  if args.config:
    variants = args.variants.split(',')
    if not all(v.count(':') == 1 for v in variants):
      parser.error(f'--variants: expected REMAT:ATTENTION_KERNEL pairs, got {args.variants!r}')
    return accelerator.bench_model_config(args.config, variants, args.batch, args.seq,
                                          args.steps or 10, log, save)
  if args.mixture:
    results = mixture.bench_mixture(args.steps or 30, log)
    print_table(mixture.table(results))
    save(results)
    return results
  shape = dict(comparison.QUICK if args.quick else comparison.FULL)
  if args.steps:
    shape['steps'] = args.steps
  results = comparison.summarize(shape, comparison.measure(shape, args.quick, log))
  log('done')
  print_table(comparison.table(shape, results))
  print('\ntargets:')
  for name, ok in results['targets'].items():
    print(f"  [{'met' if ok else 'MISSED'}] {name}")
  save(results)
  return results


if __name__ == '__main__':
  main()
