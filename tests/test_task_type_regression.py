"""A task type added as one module plus its registration: sentence-score regression.

The regression type (bloom_jax/task_types/regression.py) trains and evaluates through the
same trainer, evaluator and predictor as every other type, on a TSV written here.
"""

import dataclasses

import ml_collections
import numpy as np
import pytest
import scipy.stats
from tiny import tiny_config

from bloom_jax import evaluation, metrics, runs, tasks, train
from bloom_jax.data import sources
from bloom_jax.predict import Predictor
from bloom_jax.task_types import REGRESSION, TYPES

WORDS = ('great', 'bad', 'film', 'plot', 'actor', 'scene', 'music', 'story', 'the', 'a')


def _write_scores(path, n, seed):
  """Texts whose score is (#great - #bad): learnable, and with ties for Spearman."""
  rng = np.random.default_rng(seed)
  lines = ['sentence\tscore']
  for _ in range(n):
    words = rng.choice(WORDS, rng.integers(3, 9)).tolist()
    lines.append(f"{' '.join(words)}\t{words.count('great') - words.count('bad')}")
  lines.append('a broken row without a score\tnot-a-number')
  path.write_text('\n'.join(lines) + '\n')


@pytest.fixture
def score_task(tmp_path, monkeypatch):
  data = tmp_path / 'data'
  data.mkdir()
  _write_scores(data / 'train.tsv', 2000, 0)
  _write_scores(data / 'dev.tsv', 200, 1)
  source = sources.Local(REGRESSION, 'tsv', (('train', 'train.tsv'), ('validation', 'dev.tsv')),
                         options=(('text_column', 'sentence'), ('label_column', 'score')))
  spec = tasks.TaskSpec('scores', REGRESSION, source, description='words -> score')
  monkeypatch.setitem(tasks.REGISTRY, 'scores', spec)
  config = tiny_config()
  config.data.dir = str(data)
  config.data.tfds_dir = str(tmp_path / 'tfds')
  config.tasks = ml_collections.ConfigDict({'scores': dict(rate=1.0, loss_weight=1.0,
                                                           max_length=24)})
  config.best_metric = 'eval/scores/pearson'
  config.total_steps, config.eval_every, config.checkpoint_every = 150, 150, 150
  config.log_every = 50
  config.model.dropout = 0.0
  config.data.eval_examples = 0
  return config, str(tmp_path / 'run')


def test_registered_like_every_type():
  assert TYPES['regression'] is REGRESSION
  assert REGRESSION.metrics == ('pearson', 'spearman')


def test_correlations_match_scipy():
  rng = np.random.default_rng(0)
  pred = rng.standard_normal(50)
  target = np.round(pred + rng.standard_normal(50))  # ties
  assert metrics.pearson(pred, target) == pytest.approx(scipy.stats.pearsonr(pred, target)[0])
  assert metrics.spearman(pred, target) == pytest.approx(scipy.stats.spearmanr(pred, target)[0])
  assert np.isnan(metrics.pearson([1.0, 1.0], [0.0, 2.0]))


def test_trains_evaluates_and_predicts(score_task):
  config, workdir = score_task
  line = train.train_and_evaluate(config, workdir)
  assert line['eval/scores/pearson'] > 0.8, line  # (#great - #bad) is easy to count
  assert line['eval/scores/spearman'] > 0.7, line
  assert line['eval/scores/loss'] < 1.0, line  # the MSE; the scores' variance is about 1.5

  run = runs.load_run(workdir)
  stats = run.pipe.prepared['scores'].stats['train']
  assert stats['problems']['counts'] == {'unknown_label': 1}
  assert run.pipe.row_statistics()['scores']['examples_per_row'] > 2  # packed
  predictor = Predictor(run)
  spec = run.pipe.tasks['scores']
  out = REGRESSION.predict(predictor, spec, ['great great great film', 'bad bad plot'])
  assert out[0]['score'] > out[1]['score']
  assert REGRESSION.format_prediction(spec, out[0]) == f"{out[0]['score']:.4f}"

  # The evaluation of the restored run scores what training scored at the end.
  ev = evaluation.Evaluator(run.config, run.pipe, run.setup.graphdef, run.setup.abstract_state,
                            run.mesh)
  again = ev.evaluate(run.params, 'validation', max_examples=0)
  assert again['eval/scores/pearson'] == pytest.approx(line['eval/scores/pearson'], abs=1e-6)


def test_refuses_what_it_cannot_do():
  spec = dataclasses.replace(tasks.REGISTRY['sst2'], name='x', type=REGRESSION, attention='prefix')
  with pytest.raises(Exception, match="x.attention: 'prefix' needs rows that mark a prefix"):
    REGRESSION.check(spec, 'x')
