"""Prepares a config's tasks and prints their statistics and decoded examples.

  python -m bloom_jax.data --config configs/default.py --show 2
  python -m bloom_jax.data --config configs/real_multitask.py --config.data.dir=/data --show 2
  python -m bloom_jax.data --config configs/real_multitask.py --json packing.json

`--json` writes, per task, how its training rows are packed (over the first 50 training
batches): `rows`, `examples_per_row` and `nonpad_fraction` (the share of row positions
that hold a token).
"""

import json

from absl import flags
from ml_collections import config_flags

from bloom_jax import cli
from bloom_jax.data.pipeline import Pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.')
_SHOW = flags.DEFINE_integer('show', 2, 'Examples to decode per task and split.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where a trained tokenizer is cached.')
_JSON = flags.DEFINE_string('json', None, "Write each task's training-row packing statistics here.")


def describe_split(name: str, split: str, stats: dict, max_length: int) -> list[str]:
  p = stats['length_percentiles']
  lines = [f'  {split}: {stats["examples"]} examples, {stats["encoded"]} encoded; '
           f'tokens p50={p["50"]} p90={p["90"]} p99={p["99"]} max={p["100"]}; '
           f'truncated to {max_length}: {stats["truncated"]} '
           f'({stats["truncated"] / max(stats["examples"], 1):.1%})']
  if 'labels' in stats:
    total = max(sum(stats['labels'].values()), 1)
    lines.append('    labels: ' + ', '.join(f'{k} {v} ({v / total:.1%})'
                                            for k, v in stats['labels'].items()))
  for kind, count in sorted(stats['problems']['counts'].items()):
    first = stats['problems']['first'][kind]
    lines.append(f'    skipped/repaired {kind}: {count} (first: {first})')
  return lines


def show_examples(pipe: Pipeline, name: str, split: str, count: int) -> list[str]:
  spec, tok = pipe.tasks[name], pipe.tokenizer
  samples = pipe.prepared[name].stats[split]['samples']
  examples = pipe.prepared[name].examples(split, min(count, len(samples)))
  lines = []
  for i in range(len(examples)):
    lines.append(f'    [{i}]')
    lines += spec.type.describe(spec, tok, examples.example(i), samples[min(i, len(samples) - 1)])
  return lines


def report(pipe: Pipeline, show: int) -> str:
  lines = [f'tokenizer: vocab {pipe.tokenizer.vocab_size}, pad={pipe.tokenizer.pad_id} '
           f'bos={pipe.tokenizer.bos_id} eos={pipe.tokenizer.eos_id} sep={pipe.tokenizer.sep_id}']
  packing = pipe.row_statistics()
  for name, spec in pipe.tasks.items():
    p = packing[name]
    lines.append(f'task {name}: first {p["rows"]} training rows of {spec.max_length} tokens: '
                 f'{p["examples_per_row"]:.2f} examples per row, '
                 f'{p["nonpad_fraction"]:.1%} of positions hold a token')
    lines.append(f'task {name} ({spec.type.name}): batch {spec.batch_size} (rate {spec.rate:.3f}), '
                 f'loss weight {spec.loss_weight}, max length {spec.max_length}, '
                 f'metrics {", ".join(spec.metrics)}')
    for split, stats in pipe.prepared[name].stats.items():
      lines += describe_split(name, split, stats, spec.max_length)
      lines += show_examples(pipe, name, split, show)
  return '\n'.join(lines)


def main(argv):
  del argv
  pipe = Pipeline(_CONFIG.value, workdir=_WORKDIR.value)
  print(report(pipe, _SHOW.value))
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump(pipe.row_statistics(), f, indent=2)
    print(f'wrote {_JSON.value}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  cli.run(main)
