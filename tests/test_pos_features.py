"""Part-of-speech tags from a finished tagging run as an input feature (`pos_tagger`).

A tiny tagger is trained on the synthetic `tagging` task, then a tiny `sentiment` run
uses it: rows carry each token's word tag, the tag embedding learns, and training,
evaluation and prediction all see the tags.
"""

import dataclasses
import fcntl
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny import tiny_config

from bloom_jax import evaluation, runs, steps, tasks, train
from bloom_jax.data import pipeline
from bloom_jax.errors import ConfigError
from bloom_jax.predict import Predictor
from bloom_jax.task_types import CLASSIFICATION, REGRESSION, TAGGING, tagging


def _config(tmp, task: str, steps: int, **fields):
  config = tiny_config()
  config.data.tfds_dir = str(tmp / 'tfds')
  config.tasks = ml_collections.ConfigDict({task: dict(rate=1.0, loss_weight=1.0, max_length=48,
                                                       **fields)})
  config.best_metric = ''
  config.total_steps = config.eval_every = config.checkpoint_every = config.log_every = steps
  config.model.dropout = 0.0
  return config


@pytest.fixture(scope='module')
def tagger_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('pos')
  train.train_and_evaluate(_config(tmp, 'tagging', 60), str(tmp / 'tagger'))
  return str(tmp / 'tagger')


@pytest.fixture(scope='module')
def tagged_run(tagger_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('sentiment')
  config = _config(tmp, 'sentiment', 100, pos_tagger=os.path.relpath(tagger_dir))
  workdir = str(tmp / 'run')
  line = train.train_and_evaluate(config, workdir)
  return line, runs.load_run(workdir), config, workdir


def test_rows_carry_each_tokens_word_tag(tagged_run, tagger_dir):
  _, run, _, _ = tagged_run
  spec, tok = run.pipe.tasks['sentiment'], run.pipe.tokenizer
  assert (spec.pos_tagger.path, spec.pos_tagger.step) == (tagger_dir, 60)
  assert spec.pos_tagger.num_tags == len(tasks.REGISTRY['tagging'].labels)
  assert run.config.tasks.sentiment.pos_tagger == tagger_dir  # saved absolute

  # The tags of the tagger run's own predictions (its tokenizer, unpacked rows), spread
  # over this task's tokens word by word.
  tagger = runs.load_run(tagger_dir)
  tagger_spec = tagger.pipe.tasks['tagging']
  examples = run.pipe.examples('sentiment', 'validation', 40)
  whole = [i for i in range(len(examples)) if examples.lengths[i] < spec.max_length]
  assert len(whole) > 20  # the tagger tagged the whole text, so compare untruncated ones
  texts = [tok.decode(examples.example(i)['input_ids']) for i in whole]
  predicted = TAGGING.predict(Predictor(tagger), tagger_spec, texts)
  seen = set()
  for i, text, words in zip(whole, texts, predicted, strict=True):
    example = examples.example(i)
    assert example['input_ids'][1:-1].tolist() == tok.encode(text)  # word-wise = whole text
    pieces = tagging.word_pieces(tok, [text.split()])[0]
    expected = [tagger_spec.labels.index(t) + 1 for (_, t), p in zip(words['tags'], pieces,
                                                                     strict=True) for _ in p]
    assert example['pos_tags'].tolist() == [0] + expected + [0], text
    seen.update(expected)
  assert len(seen) >= 4  # the tagger tells words apart: the test is not about a constant

  rows = next(run.pipe.train_iterator())['sentiment']
  assert rows['pos_tags'].shape == rows['input_ids'].shape
  assert not rows['pos_tags'][rows['segment_ids'] == 0].any()
  assert rows['pos_tags'][rows['segment_ids'] > 0].mean() > 1  # tagged, not all 0


def test_tag_embedding_learns_and_changes_predictions(tagged_run):
  _, run, _, _ = tagged_run
  table = np.asarray(run.params['tag_embeddings']['sentiment']['embedding'])
  assert table.shape == (run.pipe.tasks['sentiment'].pos_tagger.num_tags + 1,
                         run.setup.model_config.hidden_size)
  assert np.abs(table).max() > 0  # zero-initialised: training moved it

  spec = run.pipe.tasks['sentiment']
  batch = next(run.pipe.train_iterator())
  counts = {'sentiment': jnp.sum(batch['sentiment']['weights'])}
  loss = functools.partial(steps.multitask_loss, graphdef=run.setup.graphdef,
                           abstract_state=run.setup.abstract_state, tasks=(spec,), batch=batch,
                           dropout_key=None, counts=counts)
  grads = jax.jit(jax.grad(lambda p: loss(p)[0]))(run.params)
  grad = np.asarray(grads['tag_embeddings']['sentiment']['embedding'])
  used = np.unique(batch['sentiment']['pos_tags'][batch['sentiment']['segment_ids'] > 0])
  assert np.all(np.abs(grad[used]).sum(axis=1) > 0)

  # Prediction reads the tags: without the learned table, the probabilities change.
  texts = ['the happy dog loves every lovely garden .', 'a sad cat hates the awful river .']
  out = CLASSIFICATION.predict(Predictor(run), spec, texts)
  assert [p['label'] for p in out] == ['positive', 'negative']
  zeroed = {**run.params, 'tag_embeddings': {'sentiment': {'embedding': jnp.zeros_like(table)}}}
  blind = CLASSIFICATION.predict(Predictor(dataclasses.replace(run, params=zeroed)), spec, texts)
  assert blind[0]['probabilities'] != out[0]['probabilities']
  assert CLASSIFICATION.format_prediction(spec, out[0]).startswith('positive\t')


def test_evaluation_of_the_restored_run_matches_training(tagged_run):
  line, run, config, _ = tagged_run
  assert line['eval/sentiment/accuracy'] > 0.6, line
  ev = evaluation.Evaluator(run.config, run.pipe, run.setup.graphdef, run.setup.abstract_state,
                            run.mesh)
  again = ev.evaluate(run.params, 'validation', max_examples=config.data.eval_examples)
  assert again['eval/sentiment/accuracy'] == pytest.approx(line['eval/sentiment/accuracy'])
  assert again['eval/sentiment/loss'] == pytest.approx(line['eval/sentiment/loss'], rel=1e-5)


def test_the_tagger_is_part_of_the_cache_key(tagged_run, tmp_path):
  _, run, config, _ = tagged_run
  prepared = run.pipe.prepared_dir
  tagged = {f for f in os.listdir(prepared) if f.startswith('sentiment-')}
  plain = config.copy_and_resolve_references()
  plain.tasks.sentiment.pos_tagger = ''
  pipe = pipeline.Pipeline(plain, workdir=str(tmp_path))
  assert 'pos_tags' not in pipe.examples('sentiment', 'train', 1).tokens
  assert {f for f in os.listdir(prepared) if f.startswith('sentiment-')} > tagged
  tagger = run.pipe.tasks['sentiment'].pos_tagger
  assert tagger.fingerprint() == {'path': tagger.path, 'step': 60}


def test_regression_takes_a_tagger_too(tagger_dir, tmp_path):
  spec = tasks.configure({'scores': dict(
      type='regression', reader='tsv', files={'train': 'x.tsv'}, pos_tagger=tagger_dir,
      options={'text_column': 'sentence', 'label_column': 'score'})})['scores']
  tok = runs.load_run(tagger_dir).pipe.tokenizer
  examples, _ = REGRESSION.encode(spec, tok, [{'text': 'the dog sees a cat .', 'label': '1.5'}],
                                  True, None)
  assert examples.tokens['pos_tags'].tolist()[0] == 0
  assert all(examples.tokens['pos_tags'][1:-1] > 0)


def _error(tmp_path, task='sentiment', **fields) -> str:
  with pytest.raises(ConfigError) as e:
    tasks.configure({task: dict(max_length=24, **fields)})
  message = str(e.value)
  assert '\n' not in message
  return message


def test_bad_taggers_are_refused_in_one_line(tagger_dir, tagged_run, tmp_path):
  key = 'tasks.sentiment.pos_tagger'
  assert _error(tmp_path, 'tagging', pos_tagger=tagger_dir).startswith(
      'tasks.tagging.pos_tagger: not for tagging tasks')
  assert _error(tmp_path, 'lm', pos_tagger=tagger_dir).startswith('tasks.lm.pos_tagger: not for')
  assert _error(tmp_path, pos_tagger=3).startswith(f'{key}: expected str, got 3')
  assert _error(tmp_path, pos_tagger=str(tmp_path / 'nowhere')).startswith(
      f'{key}: {tmp_path}/nowhere is not a directory')
  assert 'has no checkpoint' in _error(tmp_path, pos_tagger=str(tmp_path))
  classifier = tagged_run[3]  # a finished run, without a tagging task
  assert _error(tmp_path, pos_tagger=classifier).endswith(': no tagging task (it has sentiment)')

  unfinished = tmp_path / 'unfinished'
  shutil.copytree(tagger_dir, unfinished)
  saved = json.loads((unfinished / 'config.json').read_text())
  (unfinished / 'config.json').write_text(json.dumps({**saved, 'total_steps': 100}))
  assert _error(tmp_path, pos_tagger=str(unfinished)).endswith(
      'stopped at step 60 of 100: not a finished run (train it to the end first)')

  with open(os.path.join(tagger_dir, '.lock'), 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    assert 'is still training' in _error(tmp_path, pos_tagger=tagger_dir)
  assert tasks.configure({'sentiment': dict(pos_tagger=tagger_dir)})['sentiment'].pos_tagger
  assert tasks.configure({'sentiment': dict(pos_tagger='')})['sentiment'].pos_tagger is None
