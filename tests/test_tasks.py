import ml_collections
import pytest

from bloom_jax import tasks


def _tasks(**entries):
  return ml_collections.ConfigDict(
      {k: {**dict(rate=1.0, loss_weight=1.0, max_length=32), **v} for k, v in entries.items()})


def test_configure_applies_fields():
  specs = tasks.configure(_tasks(sentiment=dict(loss_weight=2.0), summarize=dict()))
  assert specs['sentiment'].loss_weight == 2.0 and specs['sentiment'].num_labels == 2
  assert specs['sentiment'].metrics == ('accuracy', 'macro_f1')
  assert specs['summarize'].head == 'generation' and specs['summarize'].target_length == 8


def test_unknown_task_names_its_key():
  with pytest.raises(ValueError, match=r'tasks\.nope: unknown task'):
    tasks.configure(_tasks(nope=dict()))


def test_unknown_field_names_its_key():
  with pytest.raises(ValueError, match=r'tasks\.lm: unknown field'):
    tasks.configure(_tasks(lm=dict(pack=True)))


@pytest.mark.parametrize('fields, key', [
    (dict(max_length=2), r'tasks\.sentiment\.max_length'),
    (dict(stopwords=True), None),
])
def test_field_validation(fields, key):
  if key is None:
    assert tasks.configure(_tasks(sentiment=fields))['sentiment'].stopwords
  else:
    with pytest.raises(ValueError, match=key):
      tasks.configure(_tasks(sentiment=fields))


def test_stopwords_refused_for_tagging():
  with pytest.raises(ValueError, match=r'tasks\.tagging\.stopwords'):
    tasks.configure(_tasks(tagging=dict(stopwords=True)))


def test_generation_target_length_must_leave_room():
  with pytest.raises(ValueError, match='max_target_length'):
    tasks.configure(_tasks(summarize=dict(max_target_length=30)))


def test_every_head_has_metrics_and_registry_heads_are_known():
  for spec in tasks.REGISTRY.values():
    assert spec.head in tasks.HEADS and spec.metrics
    assert (spec.labels is not None) == (spec.head in ('classification', 'tagging'))


def test_mixture_rates():
  sizes = {'a': 100, 'b': 400}
  assert tasks.mixture_rates('explicit', {'a': 1.0, 'b': 3.0}, sizes) == {'a': 0.25, 'b': 0.75}
  assert tasks.mixture_rates('size', {'a': 1.0, 'b': 1.0}, sizes) == {'a': 0.2, 'b': 0.8}
  temp = tasks.mixture_rates('temperature', {'a': 1.0, 'b': 1.0}, sizes, temperature=2.0)
  assert temp == pytest.approx({'a': 1 / 3, 'b': 2 / 3})
  with pytest.raises(ValueError, match='data.rates'):
    tasks.mixture_rates('uniform', {'a': 1.0}, sizes)
  with pytest.raises(ValueError, match='sum to zero'):
    tasks.mixture_rates('explicit', {'a': 0.0}, sizes)


def test_batch_sizes_round_to_multiples():
  assert tasks.batch_sizes(64, {'a': 0.25, 'b': 0.75}) == {'a': 16, 'b': 48}
  assert tasks.batch_sizes(64, {'a': 0.3, 'b': 0.7}, multiple=8) == {'a': 16, 'b': 48}
  # A tiny rate still gets one row per data-parallel shard.
  assert tasks.batch_sizes(64, {'a': 0.001, 'b': 0.999}, multiple=4) == {'a': 4, 'b': 64}
  with pytest.raises(ValueError):
    tasks.batch_sizes(64, {'a': 1.0}, multiple=0)
