import dataclasses

import ml_collections
import pytest

from bloom_jax import task_types, tasks
from bloom_jax.errors import ConfigError
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM, TAGGING


def _tasks(**entries):
  return ml_collections.ConfigDict(
      {k: {**dict(rate=1.0, loss_weight=1.0, max_length=32), **v} for k, v in entries.items()})


def test_configure_applies_fields():
  specs = tasks.configure(_tasks(sentiment=dict(loss_weight=2.0), summarize=dict()))
  assert specs['sentiment'].loss_weight == 2.0 and len(specs['sentiment'].labels) == 2
  assert specs['sentiment'].type is CLASSIFICATION
  assert specs['sentiment'].metrics == ('accuracy', 'macro_f1')
  assert specs['summarize'].type is GENERATION and specs['summarize'].target_length == 8
  assert specs['summarize'].max_length == 32


def test_unknown_task_names_its_key():
  with pytest.raises(ConfigError, match=r'tasks\.nope: unknown task'):
    tasks.configure(_tasks(nope=dict()))


def test_unknown_field_names_its_key():
  with pytest.raises(ConfigError, match=r'tasks\.lm: unknown field'):
    tasks.configure(_tasks(lm=dict(pack=True)))


def test_an_empty_mixture_is_refused():
  with pytest.raises(ConfigError, match='tasks: the mixture names no task'):
    tasks.configure(ml_collections.ConfigDict())


@pytest.mark.parametrize('fields, key', [
    (dict(max_length=2), r'tasks\.sentiment\.max_length'),
    (dict(rate=-1.0), r'tasks\.sentiment: rate and loss_weight'),
    (dict(loss_weight=-0.5), r'tasks\.sentiment: rate and loss_weight'),
    (dict(stopwords=True), None),
])
def test_field_validation(fields, key):
  if key is None:
    assert tasks.configure(_tasks(sentiment=fields))['sentiment'].stopwords
  else:
    with pytest.raises(ConfigError, match=key):
      tasks.configure(_tasks(sentiment=fields))


def test_stopwords_refused_for_tagging_and_lm():
  with pytest.raises(ConfigError, match=r'tasks\.tagging\.stopwords'):
    tasks.configure(_tasks(tagging=dict(stopwords=True)))
  with pytest.raises(ConfigError, match=r'tasks\.lm\.stopwords'):
    tasks.configure(_tasks(lm=dict(stopwords=True)))


def test_generation_target_length_must_leave_room():
  with pytest.raises(ConfigError, match=r'tasks\.summarize\.max_target_length'):
    tasks.configure(_tasks(summarize=dict(max_target_length=30)))
  assert tasks.configure(_tasks(summarize=dict(max_target_length=28)))[
      'summarize'].target_length == 28


def test_attention_defaults_to_the_type_and_is_applied():
  specs = tasks.configure(_tasks(sentiment=dict(), tagging=dict(), summarize=dict(), lm=dict()))
  assert {n: s.attention for n, s in specs.items()} == {
      'sentiment': 'bidirectional', 'tagging': 'bidirectional', 'summarize': 'prefix',
      'lm': 'causal'}
  assert all(s.attention == s.type.attention for s in specs.values())
  chosen = tasks.configure(_tasks(sentiment=dict(attention='causal'),
                                  summarize=dict(attention='causal'),
                                  lm=dict(attention='bidirectional'),
                                  tagging=dict(attention='')))
  assert {n: s.attention for n, s in chosen.items()} == {
      'sentiment': 'causal', 'summarize': 'causal', 'lm': 'bidirectional',
      'tagging': 'bidirectional'}   # '' is the type's default
  # The registry entries themselves are untouched.
  assert tasks.REGISTRY['sentiment'].attention == 'bidirectional'


def test_attention_is_validated():
  with pytest.raises(ConfigError, match=r"tasks\.lm\.attention: 'sideways' is not one of"):
    tasks.configure(_tasks(lm=dict(attention='sideways')))
  # 'prefix' needs rows that mark a prefix: only generation rows do.
  for name in ('sentiment', 'tagging', 'lm'):
    with pytest.raises(ConfigError, match=rf"tasks\.{name}\.attention: 'prefix' needs rows"):
      tasks.configure(_tasks(**{name: dict(attention='prefix')}))
  assert tasks.configure(_tasks(summarize=dict(attention='prefix')))['summarize'].attention == \
      'prefix'


def test_labelled_types_need_their_labels():
  for name in ('sentiment', 'tagging'):
    spec = dataclasses.replace(tasks.REGISTRY[name], labels=None)
    with pytest.raises(ConfigError, match=rf'tasks\.{name}: \w+ tasks need their labels'):
      spec.type.check(spec, f'tasks.{name}')


def test_task_types_are_registered_by_name():
  for t in (CLASSIFICATION, TAGGING, GENERATION, LM):
    assert task_types.TYPES[t.name] is t
  assert all(name == t.name for name, t in task_types.TYPES.items())
  assert task_types.get('tagging') is TAGGING
  with pytest.raises(ConfigError, match=r"tasks\.x\.type: unknown task type 'ranking'"):
    task_types.get('ranking', 'tasks.x.type')


def test_every_registered_task_has_a_known_type_and_metrics():
  for spec in tasks.REGISTRY.values():
    assert task_types.TYPES[spec.type.name] is spec.type and spec.metrics
    assert spec.attention == spec.type.attention
    assert (spec.labels is not None) == spec.type.needs_labels
    if hasattr(spec.source, 'task_type'):   # local files: the same type reads them
      assert spec.source.task_type is spec.type, spec.name


def test_mixture_rates():
  sizes = {'a': 100, 'b': 400}
  assert tasks.mixture_rates('explicit', {'a': 1.0, 'b': 3.0}, sizes) == {'a': 0.25, 'b': 0.75}
  assert tasks.mixture_rates('size', {'a': 1.0, 'b': 1.0}, sizes) == {'a': 0.2, 'b': 0.8}
  temp = tasks.mixture_rates('temperature', {'a': 1.0, 'b': 1.0}, sizes, temperature=2.0)
  assert temp == pytest.approx({'a': 1 / 3, 'b': 2 / 3})
  with pytest.raises(ConfigError, match='data.rates'):
    tasks.mixture_rates('uniform', {'a': 1.0}, sizes)
  with pytest.raises(ConfigError, match='sum to zero'):
    tasks.mixture_rates('explicit', {'a': 0.0}, sizes)
  with pytest.raises(ConfigError, match='data.temperature'):
    tasks.mixture_rates('temperature', {'a': 1.0}, sizes, temperature=0.0)


def test_batch_sizes_round_to_multiples():
  assert tasks.batch_sizes(64, {'a': 0.25, 'b': 0.75}) == {'a': 16, 'b': 48}
  assert tasks.batch_sizes(64, {'a': 0.3, 'b': 0.7}, multiple=8) == {'a': 16, 'b': 48}
  # A tiny rate still gets one row per data-parallel shard.
  assert tasks.batch_sizes(64, {'a': 0.001, 'b': 0.999}, multiple=4) == {'a': 4, 'b': 64}
  with pytest.raises(ValueError):
    tasks.batch_sizes(64, {'a': 1.0}, multiple=0)
