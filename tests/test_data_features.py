"""Token layouts per head: alignment, prefix/targets, windows and truncation."""

import numpy as np
import pytest

from bloom_jax import tokenizer as tokenizer_lib
from bloom_jax.data import features, text

WORDS = 'the big dog sees a small cat near the old river . unbelievably long wordpieces'.split()


@pytest.fixture(scope='module')
def tok():
  return tokenizer_lib.train([' '.join(WORDS[:12]), 'sees dog cat'] * 20, 300)


def test_classification_layout_and_truncation(tok):
  out, info = features.classification(tok, ['the big dog', ' '.join(WORDS * 3)], [1, 0], 12)
  body = tok.encode('the big dog')
  assert out['input_ids'][0, :len(body) + 2].tolist() == [tok.bos_id] + body + [tok.eos_id]
  assert out['attention_mask'][0].sum() == len(body) + 2
  assert out['input_ids'][1, -1] == tok.eos_id and out['attention_mask'][1].all()
  assert info['truncated'].tolist() == [False, True]
  assert out['targets'].tolist() == [1, 0] and out['weights'].dtype == np.float32


def test_tagging_labels_first_subword_only(tok):
  words = ['the', 'unbelievably', 'dog']
  out, info = features.tagging(tok, [words], [[5, 6, 7]], 32)
  pieces = features.word_pieces(tok, [words])[0]
  assert len(pieces[1]) > 1, 'an unseen word should split into several subwords'
  starts = np.cumsum([1] + [len(p) for p in pieces[:-1]])
  assert np.flatnonzero(out['weights'][0]).tolist() == starts.tolist()
  assert out['targets'][0, starts].tolist() == [5, 6, 7]
  assert out['targets'][0].sum() == 18
  assert tok.decode(out['input_ids'][0]) == 'the unbelievably dog'
  assert out['num_words'].tolist() == [3] and not info['truncated'][0]


def test_tagging_truncation_drops_late_words_but_counts_them(tok):
  out, info = features.tagging(tok, [WORDS], [list(range(len(WORDS)))], 6)
  assert info['truncated'][0] and out['num_words'][0] == len(WORDS)
  assert out['weights'][0].sum() < len(WORDS)
  assert out['input_ids'][0, -1] == tok.eos_id and out['weights'][0, -1] == 0


def test_generation_prefix_and_targets(tok):
  out, _ = features.generation(tok, ['the big dog sees a cat'], ['dog cat'], 24, 5)
  ids, w, pm = out['input_ids'][0], out['weights'][0], out['prefix_mask'][0]
  src, tgt = tok.encode('the big dog sees a cat'), tok.encode('dog cat')
  seq = [tok.bos_id] + src + [tok.sep_id] + tgt + [tok.eos_id]
  assert ids[:len(seq)].tolist() == seq and (ids[len(seq):] == tok.pad_id).all()
  assert pm.sum() == len(src) + 2 and pm[:len(src) + 2].all()
  # targets[i] = input_ids[i+1]; weighted exactly where the next token is target or eos.
  assert out['targets'][0, :-1].tolist() == ids[1:].tolist()
  assert out['targets'][0][w > 0].tolist() == tgt + [tok.eos_id]
  assert np.flatnonzero(w)[0] == len(src) + 1
  prompt_len = 24 - 5 - 1
  assert out['prompt_ids'].shape == (1, prompt_len)
  assert out['prompt_ids'][0, -(len(src) + 2):].tolist() == seq[:len(src) + 2]
  assert out['prompt_mask'][0].tolist() == [0] * (prompt_len - len(src) - 2) + [1] * (len(src) + 2)


def test_generation_truncates_source_and_target(tok):
  out, info = features.generation(tok, [' '.join(WORDS * 4)], [' '.join(WORDS)], 16, 4)
  assert info['truncated'][0]
  assert out['weights'][0].sum() == 5  # 4 target tokens + eos
  assert out['input_ids'][0, -1] == tok.eos_id and out['prefix_mask'][0].sum() == 16 - 4 - 1


def test_lm_windows_cover_each_token_once(tok):
  texts = ['the big dog .', 'a small cat near the old river .']
  stream = [i for t in texts for i in tok.encode(t) + [tok.eos_id]]
  token_bytes = tok.token_bytes()
  out, _ = features.lm(tok, texts, 4, keep_partial=True, token_bytes=token_bytes)
  predicted = out['targets'][out['weights'] > 0].tolist()
  assert predicted == stream[1:]
  assert out['input_ids'][0].tolist() == stream[:4]
  assert out['target_bytes'].sum() == token_bytes[stream[1:]].sum()
  train, _ = features.lm(tok, texts, 4, keep_partial=False, token_bytes=token_bytes)
  assert len(train['input_ids']) == (len(stream) - 1) // 4 and train['weights'].all()


def test_clean_normalises_and_keeps_lines_when_asked():
  assert text.clean(' ﬁne\u00a0 café\t\r\n x ') == 'fine café x'
  assert text.clean('a  b \r\n\n\n\nc ', keep_newlines=True) == 'a b\n\nc'
  assert text.remove_stopwords('The dog and a cat') == 'dog cat'
