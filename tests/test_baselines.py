"""scripts/baselines.py: each baseline on tiny inputs written here, and UPOS on the real data."""

import json
import math

import numpy as np
import pytest

from bloom_jax import tasks
from scripts import baselines

# ------------------------------------------------------------------------ UPOS


def _sentence(pairs: str) -> dict:
  words, tags = zip(*(p.split('/') for p in pairs.split()), strict=True)
  return {'words': list(words), 'tags': list(tags)}


TRAIN = [_sentence('the/DET dog/NOUN is/AUX running/VERB ./PUNCT'),
         _sentence('the/DET running/NOUN was/AUX fun/ADJ ./PUNCT'),
         _sentence('a/DET cat/NOUN was/AUX singing/VERB'),
         _sentence('record/NOUN record/VERB')]


def test_tagger_takes_each_words_most_frequent_tag_ties_alphabetically():
  tagger = baselines.fit_tagger(TRAIN)
  assert tagger.tag('the') == 'DET' and tagger.tag('.') == 'PUNCT'
  assert tagger.tag('running') == 'NOUN'   # 1 NOUN, 1 VERB: the tie goes to NOUN < VERB
  assert tagger.tag('record') == 'NOUN'
  assert tagger.known('dog') and not tagger.known('Dog')


def test_tagger_backs_off_for_unknown_words():
  tagger = baselines.fit_tagger(TRAIN)
  assert tagger.tag('Dog') == 'PROPN'      # capitalised
  assert tagger.tag('1,000') == 'NUM'      # has a digit
  assert tagger.tag('?!') == 'PUNCT'       # all punctuation
  assert tagger.tag('bringing') == 'VERB'  # suffix 'ing': singing VERB, running NOUN+VERB
  assert tagger.tag('cow') == 'NOUN'       # suffix 'cow' unseen
  assert tagger.tag('twas') == 'AUX'       # suffix 'was'


def test_tagger_scores_word_accuracy_over_all_words():
  tagger = baselines.fit_tagger(TRAIN)
  dev = [_sentence('the/DET Dog/NOUN sang/VERB'), _sentence('a/DET cat/NOUN')]
  scores = baselines.score_tagger(tagger, dev, tasks.UPOS)
  # the, a, cat right; Dog -> PROPN wrong; sang -> NOUN (unseen suffix) wrong.
  assert scores['word_accuracy'] == pytest.approx(3 / 5)
  assert scores['unknown_rate'] == pytest.approx(2 / 5)
  assert scores['known_accuracy'] == 1 and scores['unknown_accuracy'] == 0


# ------------------------------------------------------------------------ TF-IDF


def test_tfidf_classifiers_fit_choose_c_and_score():
  pytest.importorskip('sklearn')
  rows = [{'text': t, 'label': label} for label, words in (('pos', 'good great fine nice'),
                                                           ('neg', 'bad awful poor sad'))
          for t in (f'a {w} film' for w in words.split())]
  for kind in baselines.C_GRID:
    model = baselines.fit_classifier(kind, 1.0, rows)
    assert baselines.score_classifier(model, rows, ('neg', 'pos')) == {
        'accuracy': 1.0, 'macro_f1': 1.0}
    c, scores = baselines.choose_c(kind, rows, rows, ('neg', 'pos'))
    assert c in baselines.C_GRID[kind] and set(scores) == set(baselines.C_GRID[kind])
    assert scores[c] == max(scores.values())
  vocabulary = baselines.tfidf_vectorizer().fit(['What is it ?']).vocabulary_
  assert {'what', '?', 'what is', 'it ?'} <= set(vocabulary)   # whitespace tokens, bigrams


# ------------------------------------------------------------------------ AESLC


def test_lead_takes_the_first_k_words():
  assert baselines.lead('Hi  Phillip,\nplease call me', 2) == 'Hi Phillip,'
  assert baselines.lead('one two', 5) == 'one two'


def test_lead_subjects_score_against_the_best_reference():
  rows = [{'source': 'budget meeting today at noon', 'targets': ['other', 'budget meeting']}]
  scores = baselines.score_subjects([baselines.lead(rows[0]['source'], 2)], rows)
  assert scores == {'rouge1': 100.0, 'rouge2': 100.0, 'rougeL': 100.0}


# ------------------------------------------------------------------------ characters


@pytest.mark.parametrize('interpolate', [False, True])
@pytest.mark.parametrize('order', [1, 2, 3])
def test_char_ngram_distributions_sum_to_one(order, interpolate):
  model = baselines.fit_char_ngram('abracadabra\nabc', order, 0.1, interpolate)
  assert model.size == len('\nabcdr') + 1   # training characters plus 'other'
  for context in ('', 'ab', 'ra', 'zz', 'a\n', 'q'):
    p = model.distribution(context)
    assert p.shape == (model.size,) and (p > 0).all()
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_plain_add_alpha_bigram_by_hand():
  # Symbols a, b, other (A = 3); the start symbol pads the first context.
  # Bigram counts of 'abab': (start a) 1, (a b) 2, (b a) 1.
  model = baselines.fit_char_ngram('abab', 2, alpha=1.0)
  assert model.distribution('a') == pytest.approx([1 / 5, 3 / 5, 1 / 5])
  assert model.distribution('x') == pytest.approx([1 / 3] * 3)   # unseen context: uniform
  nll = -math.log(2 / 4) - math.log(3 / 5)   # p(a | start) = (1+1)/(1+3), p(b | a) = 3/5
  assert model.nll('ab') == pytest.approx(nll)
  assert baselines.metrics.nats_per_character(model.nll('ab'), 2) == pytest.approx(nll / 2)


def test_interpolated_add_alpha_by_hand():
  model = baselines.fit_char_ngram('abab', 2, alpha=1.0, interpolate=True)
  beta = 3.0   # alpha * A
  unigram_a = (2 + beta / 3) / (4 + beta)                # 3/7
  assert model.distribution('')[0] == pytest.approx((1 + beta * unigram_a) / (1 + beta))
  unigram_other = (0 + beta / 3) / (4 + beta)
  assert model.nll('x') == pytest.approx(-math.log((0 + beta * unigram_other) / (1 + beta)))


def test_with_settings_reuses_counts_of_a_higher_order_fit():
  text = 'to be or not to be that is the question\n' * 3
  high = baselines.fit_char_ngram(text, 5).with_settings(3, 0.3, True)
  direct = baselines.fit_char_ngram(text, 3, 0.3, True)
  for context in ('to', 'xq', ''):
    np.testing.assert_allclose(high.distribution(context), direct.distribution(context))


# ------------------------------------------------------------------------ output


def test_write_results_keeps_other_keys_and_other_tasks_rows(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text(json.dumps({'runs': {'x': 1}, 'baselines': {'rows': [
      {'task': 'trec', 'value': 0.9}, {'task': 'pos', 'value': 0.5}]}}))
  row = baselines._row('pos', 'm', 'test', 'word_accuracy', 0.891234567, {}, 'fixed')
  baselines.write_results(str(path), [row], {'pos': 1.23}, seed=0)
  document = json.loads(path.read_text())
  assert document['runs'] == {'x': 1}
  assert [(r['task'], r['value']) for r in document['baselines']['rows']] == [
      ('pos', 0.891235), ('trec', 0.9)]
  assert document['baselines']['seconds'] == {'pos': 1.2}
  assert row['command'] == 'python scripts/baselines.py --tasks pos'


# ------------------------------------------------------------------------ real data


def test_upos_baseline_on_the_real_splits(real_data_dir):
  data, dropped = baselines.load_task('pos', str(real_data_dir))
  assert not any(dropped.values())
  rows = baselines.run_pos(data, seed=0)
  accuracy = {r['split']: r['value'] for r in rows}
  assert set(accuracy) == {'validation', 'test'}
  assert all(0.86 < a < 0.93 for a in accuracy.values()), accuracy
