"""Fine-tuning a Hugging Face BLOOM checkpoint end to end, and the vocabulary checks.

A small BLOOM with random weights, saved by transformers beside a BLOOM-format
tokenizer.json (byte-level BPE, `<unk>` `<s>` `</s>` `<pad>` at ids 0-3) built here, is
fine-tuned with configs/finetune_hf.py on two tasks with fresh heads. The run must start
from exactly those weights, and once exported, transformers must continue a prompt with
the same greedy tokens as `bloom_jax.predict`.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tokenizers
from flax import nnx
from tokenizers import decoders, models, pre_tokenizers, trainers

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from bloom_jax import config_lib, decoding, hf, runs  # noqa: E402
from bloom_jax.data import synthetic  # noqa: E402
from bloom_jax.errors import ConfigError  # noqa: E402
from bloom_jax.evaluation import left_padded  # noqa: E402
from configs import finetune_hf  # noqa: E402
from tests.hf_fixtures import hf_logits, random_hf_bloom, save_hf  # noqa: E402
from tests.tiny import child_env  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ['the big dog sees', 'a small cat', 'the teacher likes the red']
NEW_TOKENS = 8


def bloom_tokenizer(path: str) -> int:
  """A BLOOM-format tokenizer.json (no `<sep>`, as BLOOM's own) at `path`; its size."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=['<unk>', '<s>', '</s>', '<pad>'],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  rng = np.random.default_rng(0)
  sentences = [' '.join(w for w, _ in synthetic.sentence(rng)) for _ in range(200)]
  tok.train_from_iterator(sentences, trainer=trainer)
  assert [tok.token_to_id(t) for t in ('<unk>', '<s>', '</s>', '<pad>')] == [0, 1, 2, 3]
  tok.save(path)
  return tok.get_vocab_size()


def _cli(*args, devices=1):
  return subprocess.Popen([sys.executable, '-m', *args], cwd=REPO, env=child_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
  stdout, stderr = process.communicate(timeout=600)
  return process.returncode, stdout, stderr


def _last_line(stderr: str) -> str:
  return stderr.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """A transformers BLOOM directory whose embedding has BLOOM-style padding rows beyond the
  tokenizer (here up to a multiple of 128), and its tokenizer.json."""
  directory = str(tmp_path_factory.mktemp('bloom_tiny'))
  tokens = bloom_tokenizer(os.path.join(directory, 'tokenizer.json'))
  rows = -(-tokens // 128) * 128
  assert rows > tokens
  model = random_hf_bloom(rows, 32, 4, 2, seed=5)
  save_hf(model, directory)
  return directory, model, tokens


@pytest.fixture(scope='module')
def finetuned(checkpoint, tmp_path_factory):
  directory, _, _ = checkpoint
  workdir = str(tmp_path_factory.mktemp('ft') / 'run')
  code, _, stderr = _finish(_cli(
      'bloom_jax.train', '--config', 'configs/finetune_hf.py:synthetic', '--workdir', workdir,
      f'--config.model.init_from_hf={directory}',
      f'--config.tokenizer.path={directory}/tokenizer.json',
      # float32 on CPU, so that greedy tokens can be compared with transformers' exactly
      '--config.model.dtype=float32', '--config.total_steps=3', '--config.log_every=1',
      '--config.eval_every=3', '--config.checkpoint_every=3', '--config.tensorboard=False',
      '--config.data.batch_size=8', '--config.data.eval_examples=8',
      '--config.data.eval_batch_size=8', '--config.tasks.sentiment.max_length=24',
      '--config.tasks.lm.max_length=32', '--config.optimizer.learning_rate=2e-4',
      '--config.optimizer.warmup_steps=1'))
  assert code == 0, stderr[-3000:]
  return workdir, runs.load_run(workdir)


def test_the_trunk_starts_from_the_checkpoint(checkpoint, finetuned):
  directory, hf_model, tokens = checkpoint
  _, run = finetuned
  assert set(run.pipe.tasks) == {'sentiment', 'lm'} and run.step == 3
  assert run.pipe.tokenizer.vocab_size == tokens
  assert run.setup.model_config.vocab_size == hf_model.config.vocab_size
  # The state the trainer started from: the checkpoint's trunk, fresh heads beside it.
  start = jax.device_get(run.setup.init_train_state()['params'])
  assert set(start) == {'bloom', 'heads'}
  assert set(start['heads']) == {'sentiment'}  # lm predicts through the tied embedding
  jax.tree.map(np.testing.assert_array_equal, start['bloom'],
               hf.load_params(directory, run.setup.model_config))
  ids = np.random.default_rng(0).integers(4, tokens, (2, 10))
  mask = np.ones_like(ids)
  ours = np.asarray(hf.from_params(run.setup.model_config, start['bloom'])(ids, mask))
  np.testing.assert_allclose(ours, hf_logits(hf_model, ids, mask), atol=1e-4)
  # ... and fine-tuning moved it.
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), start['bloom'],
                       jax.device_get(run.params['bloom']))
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_exported_model_generates_like_predict(checkpoint, finetuned):
  _, _, tokens = checkpoint
  workdir, run = finetuned
  with open(os.path.join(workdir, 'prompts.txt'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(PROMPTS) + '\n')
  export = _cli('bloom_jax.hf', 'export', '--workdir', workdir, '--hf_dir', 'exported')
  predict = _cli('bloom_jax.predict', '--workdir', workdir, '--task', 'lm', '--input',
                 os.path.join(workdir, 'prompts.txt'), '--output', 'predictions.jsonl',
                 '--max_new_tokens', str(NEW_TOKENS))
  code, _, stderr = _finish(export)
  assert code == 0, stderr[-3000:]
  exported = os.path.join(workdir, 'exported')
  model = transformers.BloomForCausalLM.from_pretrained(exported).eval()
  tok = tokenizers.Tokenizer.from_file(os.path.join(exported, 'tokenizer.json'))
  assert tok.get_vocab_size() == tokens

  # The exported weights are the fine-tuned run's: the same logits as its trunk.
  trunk = hf.from_params(run.setup.model_config, jax.device_get(run.params['bloom']))
  ids = np.random.default_rng(1).integers(4, tokens, (2, 10))
  mask = np.ones_like(ids)
  np.testing.assert_allclose(np.asarray(trunk(ids, mask)), hf_logits(model, ids, mask),
                             atol=1e-4)

  # Greedy continuations: transformers', this process's (KV cache, left-padded batch), and
  # the command line's.
  prompts = [[1] + tok.encode(p).ids for p in PROMPTS]  # <s> and the text: the lm task's
  theirs = []
  for prompt in prompts:
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                           max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=2,
                           pad_token_id=3)
    theirs.append(out[0, len(prompt):].tolist())
  batch = left_padded(prompts, max(map(len, prompts)), 3)
  result = jax.device_get(decoding.generate(*nnx.split(trunk), *batch,
                                            max_new_tokens=NEW_TOKENS, eos_id=2, pad_id=3))
  ours = [row[:n].tolist() for row, n in zip(result['tokens'], result['lengths'], strict=True)]
  assert ours == theirs

  code, _, stderr = _finish(predict)
  assert code == 0, stderr[-3000:]
  with open(os.path.join(workdir, 'predictions.jsonl'), encoding='utf-8') as f:
    answers = [json.loads(line) for line in f]
  assert [a['text'] for a in answers] == PROMPTS
  assert [a['generated'] for a in answers] == [
      tok.decode([t for t in row if t != 2], skip_special_tokens=True) for row in theirs]


def _config(hf_dir: str, tokenizer_path: str):
  config = finetune_hf.get_config('synthetic')
  config.model.init_from_hf, config.tokenizer.path = hf_dir, tokenizer_path
  return config


def _rows_only(directory, rows: int) -> str:
  """A checkpoint directory with just a config.json: what the start-up checks read."""
  os.makedirs(directory)
  config = {'model_type': 'bloom', 'vocab_size': rows, 'hidden_size': 32, 'n_layer': 2,
            'n_head': 4}
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config, f)
  return str(directory)


@pytest.mark.parametrize('extra_rows, accepted', [
    (0, True), (200, True),   # BLOOM itself: 250,680 tokens in 250,880 rows
    (511, True), (512, False), (-1, False), (-100, False)])
def test_tokenizer_must_fit_the_checkpoint_embedding(checkpoint, tmp_path, extra_rows, accepted):
  directory, _, tokens = checkpoint
  hf_dir = _rows_only(tmp_path / 'ckpt', tokens + extra_rows)
  config = _config(hf_dir, os.path.join(directory, 'tokenizer.json'))
  if accepted:
    config_lib.validate(config)
    return
  with pytest.raises(ConfigError) as info:
    config_lib.validate(config)
  message = str(info.value)
  assert message.startswith(f'model.init_from_hf: {hf_dir} has {tokens + extra_rows:,} '
                            f'embedding rows, but tokenizer.path: ')
  assert f'has {tokens:,} tokens' in message and '\n' not in message


def test_fine_tuning_without_the_checkpoint_tokenizer_is_refused(checkpoint, tmp_path):
  directory, _, _ = checkpoint
  with pytest.raises(ConfigError, match=(
      r'tokenizer.path: model.init_from_hf needs the tokenizer the checkpoint was trained with, '
      rf'not one trained here; give --config.tokenizer.path={directory}/tokenizer.json')):
    config_lib.validate(_config(directory, ''))
  bare = _rows_only(tmp_path / 'bare', 384)
  with pytest.raises(ConfigError, match=f'there is none in {bare}'):
    config_lib.validate(_config(bare, ''))


def test_a_mismatched_tokenizer_stops_training_in_one_line(checkpoint, tmp_path):
  directory, _, tokens = checkpoint
  hf_dir = _rows_only(tmp_path / 'big', 4096)
  workdir = tmp_path / 'run'
  code, _, stderr = _finish(_cli(
      'bloom_jax.train', '--config', 'configs/finetune_hf.py:synthetic', '--workdir',
      str(workdir), f'--config.model.init_from_hf={hf_dir}',
      f'--config.tokenizer.path={directory}/tokenizer.json'))
  assert code == 2
  assert _last_line(stderr) == (
      f'train.py: error: model.init_from_hf: {hf_dir} has 4,096 embedding rows, but '
      f'tokenizer.path: {directory}/tokenizer.json has {tokens:,} tokens; fine-tuning needs the '
      "checkpoint's own tokenizer (its rows may exceed the tokens only by padding, fewer than "
      '512)')
  assert not workdir.exists()
