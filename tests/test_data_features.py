"""Each task type's encoding and rows: layouts, truncation, tags at a word's first or last
subword, generation prefix and targets, LM windows, and what packing several examples
into a row keeps."""

import numpy as np
import pytest

from bloom_jax import tasks
from bloom_jax import tokenizer as tokenizer_lib
from bloom_jax.data import text
from bloom_jax.errors import ConfigError
from bloom_jax.task_types import CLASSIFICATION, GENERATION, LM, TAGGING
from bloom_jax.task_types.generation import prompt_length, target_budget
from bloom_jax.task_types.tagging import word_pieces
from bloom_jax.tasks import TaskSpec

WORDS = 'the big dog sees a small cat near the old river . unbelievably long wordpieces'.split()


@pytest.fixture(scope='module')
def tok():
  return tokenizer_lib.train([' '.join(WORDS[:12]), 'sees dog cat'] * 20, 300)


def _spec(task_type, max_length, **fields):
  return TaskSpec('t', task_type, source=None, max_length=max_length, **fields)


def _segments(rows):
  """(row, segment, positions) of every example in packed rows."""
  out = []
  for r, segment_ids in enumerate(rows['segment_ids']):
    for s in range(1, int(segment_ids.max(initial=0)) + 1):
      out.append((r, s, np.flatnonzero(segment_ids == s)))
  return out


def _check_row_layout(rows, examples, pad_id):
  """Every example sits whole and contiguous in one row; the rest is padding."""
  segments = _segments(rows)
  assert len(segments) == len(examples)
  for _, _, at in segments:
    assert (np.diff(at) == 1).all()
  pad = rows['segment_ids'] == 0
  assert (rows['input_ids'][pad] == pad_id).all()
  assert (rows['weights'][pad] == 0).all()
  # Segments are numbered 1, 2, ... from the start of each row, with no gaps.
  for segment_ids in rows['segment_ids']:
    used = segment_ids[segment_ids > 0]
    assert (np.diff(used) >= 0).all() and set(used.tolist()) == set(range(1, used.max() + 1))
  # The examples' tokens are all there, once each.
  flat = sorted(tuple(rows['input_ids'][r, at].tolist()) for r, _, at in segments)
  assert flat == sorted(tuple(examples.example(i)['input_ids'].tolist())
                        for i in range(len(examples)))


# --------------------------------------------------------------------------- classification


def test_classification_layout_and_truncation(tok):
  spec = _spec(CLASSIFICATION, 12, labels=('neg', 'pos'))
  rows = [{'text': 'the big dog', 'label': 'pos'}, {'text': ' '.join(WORDS * 3), 'label': 'neg'}]
  examples, info = CLASSIFICATION.encode(spec, tok, rows, True, None)
  body = tok.encode('the big dog')
  first, second = examples.example(0), examples.example(1)
  assert first['input_ids'].tolist() == [tok.bos_id] + body + [tok.eos_id]
  assert examples.lengths.tolist() == [len(body) + 2, 12]
  assert second['input_ids'][-1] == tok.eos_id and second['input_ids'][0] == tok.bos_id
  assert info['truncated'].tolist() == [False, True]
  assert info['length'][1] == len(tok.encode(' '.join(WORDS * 3))) + 2
  # The label is read at the example's last token (</s>), and only there.
  for example, label in ((first, 1), (second, 0)):
    assert example['weights'].tolist() == [0.0] * (len(example['weights']) - 1) + [1.0]
    assert example['targets'][-1] == label and example['weights'].dtype == np.float32
  assert tok.decode(first['input_ids']) == 'the big dog'


def test_classification_rows_weight_each_segments_last_token(tok):
  spec = _spec(CLASSIFICATION, 16, labels=('a', 'b', 'c'))
  texts = ['the dog', 'a small cat near the old river', 'sees', 'the big dog sees a cat',
           'river', 'old cat .', 'a dog sees the cat near the river']
  rows = [{'text': t, 'label': 'abc'[i % 3]} for i, t in enumerate(texts)]
  examples, _ = CLASSIFICATION.encode(spec, tok, rows, True, None)
  packed = CLASSIFICATION.rows(spec, examples, tok.pad_id, packed=True)
  assert packed['input_ids'].shape[1] == 16 and len(packed['input_ids']) < len(texts)
  assert set(packed) == {'input_ids', 'targets', 'weights', 'segment_ids'}
  _check_row_layout(packed, examples, tok.pad_id)
  labels = {}
  for r, _, at in _segments(packed):
    weights = packed['weights'][r, at]
    assert weights.tolist() == [0.0] * (len(at) - 1) + [1.0]
    assert packed['input_ids'][r, at[0]] == tok.bos_id
    assert packed['input_ids'][r, at[-1]] == tok.eos_id
    labels[tok.decode(packed['input_ids'][r, at])] = int(packed['targets'][r, at[-1]])
  assert labels == {t: i % 3 for i, t in enumerate(texts)}
  assert packed['weights'].sum() == len(texts)
  # Unpacked: one example per row, in order.
  alone = CLASSIFICATION.rows(spec, examples, tok.pad_id, packed=False)
  assert len(alone['input_ids']) == len(texts) and alone['segment_ids'].max() == 1
  assert [tok.decode(ids) for ids in alone['input_ids']] == texts
  assert alone['targets'][alone['weights'] > 0].tolist() == [i % 3 for i in range(len(texts))]


# --------------------------------------------------------------------------- tagging


@pytest.mark.parametrize('subword', ['first', 'last'])
def test_tagging_labels_one_subword_per_word(tok, subword):
  spec = _spec(TAGGING, 32, labels=tuple('ABCDEFGH'), subword=subword)
  words = ['the', 'unbelievably', 'dog']
  examples, info = TAGGING.encode(spec, tok, [{'words': words, 'tags': ['F', 'G', 'H']}], True,
                                  None)
  pieces = word_pieces(tok, [words])[0]
  assert len(pieces[1]) > 1, 'an unseen word should split into several subwords'
  example = examples.example(0)
  ends = np.cumsum([1] + [len(p) for p in pieces])  # one past each word's last subword
  reads = ends[:-1] if subword == 'first' else ends[1:] - 1
  assert np.flatnonzero(example['weights']).tolist() == reads.tolist()
  assert example['targets'][reads].tolist() == [5, 6, 7]
  assert example['targets'].sum() == 18
  assert example['input_ids'].tolist() == [tok.bos_id] + sum(pieces, []) + [tok.eos_id]
  assert tok.decode(example['input_ids']) == 'the unbelievably dog'
  assert examples.scalars['num_words'].tolist() == [3] and not info['truncated'][0]
  described = TAGGING.describe(spec, tok, example, {'words': words})
  assert described == ['    matches source: the/F unbelievably/G dog/H']


def test_tagging_reads_a_word_cut_by_max_length_at_neither_subword(tok):
  """A word whose last subword is cut counts as cut with `subword='last'`, though its first
  subword is kept: the word is wrong in evaluation either way, and never trained on a piece."""
  words = ['the', 'unbelievably', 'dog']
  pieces = word_pieces(tok, [words])[0]
  max_length = 1 + len(pieces[0]) + 1 + 1  # <s>, 'the', the first piece of the long word, </s>
  for subword, kept in (('first', 2), ('last', 1)):
    spec = _spec(TAGGING, max_length, labels=tuple('ABCDEFGH'), subword=subword)
    examples, info = TAGGING.encode(spec, tok, [{'words': words, 'tags': ['F', 'G', 'H']}],
                                    True, None)
    example = examples.example(0)
    assert info['truncated'][0] and examples.scalars['num_words'][0] == 3
    assert example['weights'].sum() == kept
    assert example['targets'][example['weights'] > 0].tolist() == [5, 6][:kept]


def test_tagging_truncation_drops_late_words_but_counts_them(tok):
  spec = _spec(TAGGING, 6, labels=tuple(str(i) for i in range(len(WORDS))))
  row = {'words': WORDS, 'tags': [str(i) for i in range(len(WORDS))]}
  examples, info = TAGGING.encode(spec, tok, [row], True, None)
  example = examples.example(0)
  assert info['truncated'][0] and examples.scalars['num_words'][0] == len(WORDS)
  assert len(example['input_ids']) == 6 and example['weights'].sum() < len(WORDS)
  assert example['input_ids'][-1] == tok.eos_id and example['weights'][-1] == 0
  # The words kept are the first ones, with their own tags.
  kept = int(example['weights'].sum())
  assert example['targets'][example['weights'] > 0].tolist() == list(range(kept))


def test_subword_is_checked_by_name_and_task_type():
  assert tasks.configure({'tagging': dict(subword='last')})['tagging'].subword == 'last'
  assert tasks.configure({'tagging': {}})['tagging'].subword == 'first'
  with pytest.raises(ConfigError, match=r"tasks.tagging.subword: 'middle' is not one of"):
    tasks.configure({'tagging': dict(subword='middle')})
  for name in ('sentiment', 'lm', 'summarize'):
    with pytest.raises(ConfigError, match=f'tasks.{name}.subword: not for'):
      tasks.configure({name: dict(subword='last')})


def test_tagging_rows_sum_words_and_keep_tags_in_place(tok):
  spec = _spec(TAGGING, 20, labels=('x', 'y'))
  sentences = [WORDS[:3], WORDS[3:8], WORDS[8:12], ['dog'], WORDS[:6], ['the', 'cat']]
  rows = [{'words': s, 'tags': ['xy'[len(w) % 2] for w in s]} for s in sentences]
  examples, _ = TAGGING.encode(spec, tok, rows, True, None)
  packed = TAGGING.rows(spec, examples, tok.pad_id, packed=True)
  assert len(packed['input_ids']) < len(sentences)
  _check_row_layout(packed, examples, tok.pad_id)
  assert packed['num_words'].shape == (len(packed['input_ids']),)
  assert packed['num_words'].sum() == sum(len(s) for s in sentences)
  found = {}
  for r, _, at in _segments(packed):
    words = tok.decode(packed['input_ids'][r, at]).split()
    firsts = at[packed['weights'][r, at] > 0]
    assert len(firsts) == len(words)
    found[' '.join(words)] = ''.join('xy'[t] for t in packed['targets'][r, firsts])
  assert found == {' '.join(s): ''.join('xy'[len(w) % 2] for w in s) for s in sentences}
  for r in range(len(packed['input_ids'])):   # each row's count is its own sentences' words
    texts = [tok.decode(packed['input_ids'][q, at]) for q, _, at in _segments(packed) if q == r]
    assert packed['num_words'][r] == sum(len(t.split()) for t in texts)


# --------------------------------------------------------------------------- generation


def test_generation_prefix_and_targets(tok):
  spec = _spec(GENERATION, 24, max_target_length=5)
  examples, info = GENERATION.encode(
      spec, tok, [{'source': 'the big dog sees a cat', 'targets': ['dog cat']}], True, None)
  example = examples.example(0)
  ids, w, pm = example['input_ids'], example['weights'], example['prefix_mask']
  # Both tokenized as after a space in running text (tests/test_generation_options.py).
  src, tgt = tok.encode(' the big dog sees a cat'), tok.encode(' dog cat')
  seq = [tok.bos_id] + src + [tok.sep_id] + tgt + [tok.eos_id]
  assert ids.tolist() == seq and not info['truncated'][0]
  assert pm.tolist() == [1] * (len(src) + 2) + [0] * (len(tgt) + 1)
  # targets[i] = input_ids[i+1]; weighted exactly where the next token is target or eos.
  assert example['targets'][:-1].tolist() == ids[1:].tolist()
  assert example['targets'][w > 0].tolist() == tgt + [tok.eos_id]
  assert np.flatnonzero(w)[0] == len(src) + 1   # the <sep> predicts the first target token
  assert GENERATION.prompts(examples) == [seq[:len(src) + 2]]
  assert prompt_length(spec) == 24 - 5 - 1


def test_generation_truncates_source_and_target(tok):
  spec = _spec(GENERATION, 16, max_target_length=4)
  row = {'source': ' '.join(WORDS * 4), 'targets': [' '.join(WORDS)]}
  examples, info = GENERATION.encode(spec, tok, [row], True, None)
  example = examples.example(0)
  assert info['truncated'][0]
  assert example['weights'].sum() == 5  # 4 target tokens + eos
  assert len(example['input_ids']) == 16 and example['input_ids'][-1] == tok.eos_id
  assert example['prefix_mask'].sum() == prompt_length(spec) == 16 - 4 - 1
  assert example['input_ids'][prompt_length(spec) - 1] == tok.sep_id
  assert example['targets'][example['weights'] > 0].tolist() == \
      tok.encode(' ' + ' '.join(WORDS))[:4] + [tok.eos_id]


def test_generation_rows_project_only_target_positions_within_budget(tok):
  spec = _spec(GENERATION, 32, max_target_length=3)
  rng = np.random.default_rng(0)
  rows = [{'source': ' '.join(rng.choice(WORDS[:12], rng.integers(1, 8))),
           'targets': [' '.join(rng.choice(WORDS[:12], rng.integers(1, 4)))]} for _ in range(30)]
  examples, _ = GENERATION.encode(spec, tok, rows, True, None)
  packed = GENERATION.rows(spec, examples, tok.pad_id, packed=True)
  budget = target_budget(spec)
  assert budget == 2 * (3 + 1) < spec.max_length
  assert packed['target_positions'].shape == packed['targets'].shape == \
      packed['weights'].shape == (len(packed['input_ids']), budget)
  assert packed['input_ids'].shape == packed['prefix_mask'].shape == \
      packed['segment_ids'].shape == (len(packed['input_ids']), 32)
  assert len(packed['input_ids']) < len(rows)
  assert packed['weights'].sum() == examples.tokens['weights'].sum()
  weights_of = {}
  for r in range(len(packed['input_ids'])):
    ids, segment_ids = packed['input_ids'][r], packed['segment_ids'][r]
    scored = packed['weights'][r] > 0
    assert scored.sum() <= budget and (scored[:scored.sum()]).all()   # scored slots first
    positions = packed['target_positions'][r][scored]
    assert (np.diff(positions) > 0).all() and (segment_ids[positions] > 0).all()
    assert (packed['targets'][r][~scored] == tok.pad_id).all()
    for p, target in zip(positions, packed['targets'][r][scored], strict=True):
      # A target is the token after its position in the same segment, and never in the prefix
      # except at <sep>; a segment's last target is its </s>.
      assert ids[p + 1] == target and segment_ids[p + 1] == segment_ids[p]
      assert packed['prefix_mask'][r, p + 1] == 0
      assert packed['prefix_mask'][r, p] == 0 or ids[p] == tok.sep_id
    for s in np.unique(segment_ids[positions]):
      mine = positions[segment_ids[positions] == s]
      at = np.flatnonzero(segment_ids == s)
      assert ids[mine[-1] + 1] == tok.eos_id and mine[-1] + 1 == at[-1]
      assert packed['prefix_mask'][r, at].sum() == mine[0] - at[0] + 1  # prefix ends at <sep>
      source = tok.decode(ids[at][packed['prefix_mask'][r, at] > 0])
      weights_of[tokenizer_lib.strip_space(source)] = len(mine)
  assert len(_segments(packed)) == len(rows)
  _check_row_layout({k: v for k, v in packed.items() if k != 'weights'} |
                    {'weights': np.zeros_like(packed['input_ids'])}, examples, tok.pad_id)
  sources = {r['source']: len(tok.encode(' ' + r['targets'][0])[:3]) + 1 for r in rows}
  assert weights_of == sources


def test_generation_inference_rows_are_prompts(tok):
  spec = _spec(GENERATION, 24, max_target_length=5)
  rows = GENERATION.inference_rows(spec, tok, ['the  big\tdog ', ''])
  assert rows == [{'source': 'the big dog'}, {'source': ''}]
  examples, _ = GENERATION.encode(spec, tok, rows, False, None)
  assert GENERATION.prompts(examples) == [
      [tok.bos_id] + tok.encode(' the big dog') + [tok.sep_id], [tok.bos_id, tok.sep_id]]
  alone = GENERATION.rows(spec, examples, tok.pad_id, packed=False)
  assert alone['weights'].sum() == 0
  assert (alone['prefix_mask'] == (alone['segment_ids'] > 0)).all()


# --------------------------------------------------------------------------- lm


def test_lm_windows_cover_each_token_once(tok):
  spec = _spec(LM, 4)
  rows = [{'text': 'the big dog .'}, {'text': 'a small cat near the old river .'}]
  stream = [i for r in rows for i in tok.encode(r['text']) + [tok.eos_id]]
  token_bytes = tok.token_bytes()
  examples, _ = LM.encode(spec, tok, rows, False, token_bytes)
  predicted = examples.tokens['targets'][examples.tokens['weights'] > 0].tolist()
  assert predicted == stream[1:]
  assert examples.example(0)['input_ids'].tolist() == stream[:4]
  assert examples.scalars['target_bytes'].sum() == token_bytes[stream[1:]].sum()
  for i in range(len(examples)):   # each window's inputs are its targets shifted by one
    w = examples.example(i)
    assert w['input_ids'][1:].tolist() == w['targets'][:-1].tolist()
  rows_eval = LM.rows(spec, examples, tok.pad_id, packed=True)
  assert rows_eval['segment_ids'].max() == 1          # one window per row
  assert rows_eval['targets'][rows_eval['weights'] > 0].tolist() == stream[1:]   # in order
  assert rows_eval['target_bytes'].tolist() == examples.scalars['target_bytes'].tolist()
  train, _ = LM.encode(spec, tok, rows, True, token_bytes)
  assert len(train) == (len(stream) - 1) // 4 and (train.lengths == 4).all()
  assert train.tokens['weights'].all()
  train_rows = LM.rows(spec, train, tok.pad_id, packed=True)
  assert (train_rows['segment_ids'] == 1).all()


# --------------------------------------------------------------------------- text


def test_clean_normalises_and_keeps_lines_when_asked():
  assert text.clean(' ﬁne\u00a0 café\t\r\n x ') == 'fine café x'
  assert text.clean('a  b \r\n\n\n\nc ', keep_newlines=True) == 'a b\n\nc'
  assert text.remove_stopwords('The dog and a cat') == 'dog cat'


def test_clean_rows_per_type():
  stop = _spec(CLASSIFICATION, 16, labels=('a',), stopwords=True)
  assert CLASSIFICATION.clean(stop, {'text': ' The dog  and a cat ', 'label': 'a'}) == \
      {'text': 'dog cat', 'label': 'a'}
  assert CLASSIFICATION.clean(stop, {'text': 'the a', 'label': 'a'}) is None
  assert TAGGING.clean(None, {'words': [' ﬁne', 'x\u00a0'], 'tags': ['A', 'B']}) == \
      {'words': ['fine', 'x'], 'tags': ['A', 'B']}
  assert TAGGING.labels_of({'words': ['a'], 'tags': ['A']}) == ['A']
  gen = _spec(GENERATION, 16)
  assert GENERATION.clean(gen, {'source': ' x\ty ', 'targets': [' a ', 'b  c']}) == \
      {'source': 'x y', 'targets': ['a', 'b c']}
  assert LM.clean(None, {'text': 'a  b\r\n\n\n\nc'}) == {'text': 'a b\n\nc'}
