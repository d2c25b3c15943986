"""Prepares a config's tasks and prints their statistics and decoded examples.

  python -m bloom_jax.data --config configs/default.py --show 2
  python -m bloom_jax.data --config configs/real_multitask.py --config.data.dir=/data --show 2
"""

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bloom_jax.data.pipeline import Pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.')
_SHOW = flags.DEFINE_integer('show', 2, 'Examples to decode per task and split.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where a trained tokenizer is cached.')


def describe_split(name: str, split: str, stats: dict, max_length: int) -> list[str]:
  p = stats['length_percentiles']
  lines = [f'  {split}: {stats["examples"]} examples, {stats["rows"]} rows; tokens p50={p["50"]} '
           f'p90={p["90"]} p99={p["99"]} max={p["100"]}; truncated to {max_length}: '
           f'{stats["truncated"]} ({stats["truncated"] / max(stats["examples"], 1):.1%})']
  if 'labels' in stats:
    total = max(sum(stats['labels'].values()), 1)
    lines.append('    labels: ' + ', '.join(f'{k} {v} ({v / total:.1%})'
                                            for k, v in stats['labels'].items()))
  for kind, count in sorted(stats['problems']['counts'].items()):
    first = stats['problems']['first'][kind]
    lines.append(f'    skipped/repaired {kind}: {count} (first: {first})')
  return lines


def _verdict(decoded: str, source: str) -> str:
  if decoded == source:
    return 'matches source'
  return 'source prefix (truncated)' if source.startswith(decoded) else 'DIFFERS from source'


def show_examples(pipe: Pipeline, name: str, split: str, count: int) -> list[str]:
  spec, tok = pipe.tasks[name], pipe.tokenizer
  arrays = pipe.prepared[name].arrays[split]
  samples = pipe.prepared[name].stats[split]['samples']
  lines = []
  for i in range(min(count, len(samples), len(arrays['input_ids']))):
    ids = arrays['input_ids'][i][arrays['attention_mask'][i] > 0]
    sample = samples[i]
    if spec.head == 'classification':
      decoded = tok.decode(ids)
      lines.append(f'    [{i}] label={spec.labels[arrays["targets"][i]]!r} (source '
                   f'{sample["label"]!r}) {_verdict(decoded, sample["text"])}: {decoded!r}')
    elif spec.head == 'tagging':
      weights = arrays['weights'][i] > 0
      starts = np.flatnonzero(weights)
      ends = list(starts[1:]) + [int(arrays['attention_mask'][i].sum()) - 1]
      pairs = [f'{tok.decode(arrays["input_ids"][i][s:e]).strip()}/'
               f'{spec.labels[arrays["targets"][i][s]]}' for s, e in zip(starts, ends, strict=True)]
      decoded = tok.decode(ids)
      lines.append(f'    [{i}] {_verdict(decoded, " ".join(sample["words"]))}: {" ".join(pairs)}')
    elif spec.head == 'generation':
      prefix = arrays['prefix_mask'][i] > 0
      source = tok.decode(arrays['input_ids'][i][prefix])
      target = tok.decode(arrays['targets'][i][arrays['weights'][i] > 0])
      lines.append(f'    [{i}] source ({_verdict(source, sample["source"])}): {source[:300]!r}')
      lines.append(f'        target ({_verdict(target, sample["targets"][0])}): {target!r}'
                   f' (references: {len(sample["targets"])})')
    else:
      decoded = tok.decode(ids, skip_special=False)
      verdict = _verdict(decoded, sample['text'][:len(decoded)]) if i == 0 else 'window'
      lines.append(f'    [{i}] {verdict}: {decoded[:300]!r}')
  return lines


def report(pipe: Pipeline, show: int) -> str:
  lines = [f'tokenizer: vocab {pipe.tokenizer.vocab_size}, pad={pipe.tokenizer.pad_id} '
           f'bos={pipe.tokenizer.bos_id} eos={pipe.tokenizer.eos_id} sep={pipe.tokenizer.sep_id}']
  for name, spec in pipe.tasks.items():
    lines.append(f'task {name} ({spec.head}): batch {spec.batch_size} (rate {spec.rate:.3f}), '
                 f'loss weight {spec.loss_weight}, max length {spec.max_length}, '
                 f'metrics {", ".join(spec.metrics)}')
    for split, stats in pipe.prepared[name].stats.items():
      lines += describe_split(name, split, stats, spec.max_length)
      lines += show_examples(pipe, name, split, show)
  return '\n'.join(lines)


def main(argv):
  del argv
  print(report(Pipeline(_CONFIG.value, workdir=_WORKDIR.value), _SHOW.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
