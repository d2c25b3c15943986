import json

import numpy as np
import pytest
import tokenizers

from bloom_jax import tokenizer as tokenizer_lib

TEXTS = [f'the {a} cat {v} the {b} dog .' for a in ('big', 'small', 'old') for v in
         ('sees', 'likes', 'chases') for b in ('red', 'quiet', 'tall')] * 5 + ['café naïve über']


def test_special_ids_follow_bloom():
  tok = tokenizer_lib.train(TEXTS, 300)
  assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.sep_id) == (0, 1, 2, 3, 4)
  assert tok.encode('the cat') and not set(tok.encode('the cat')) & tok.special_ids


def test_training_is_deterministic():
  a = tokenizer_lib.train(TEXTS, 300)
  b = tokenizer_lib.train(list(TEXTS), 300)
  assert a.hf.to_str() == b.hf.to_str()


def test_round_trip_and_token_bytes():
  tok = tokenizer_lib.train(TEXTS, 300)
  for text in ['the big cat sees the red dog .', 'café naïve über', 'unseen wörds ✓']:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.token_bytes()[ids].sum() == len(text.encode())
  assert tok.decode([tok.bos_id] + tok.encode('x') + [tok.eos_id]) == 'x'


def test_save_load(tmp_path):
  tok = tokenizer_lib.train(TEXTS, 300)
  tok.save(str(tmp_path / 'sub' / 'tokenizer.json'))
  loaded = tokenizer_lib.Tokenizer.load(str(tmp_path / 'sub' / 'tokenizer.json'))
  assert loaded.fingerprint() == tok.fingerprint()
  assert loaded.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def _bloom_like(tmp_path, specials):
  """A tokenizer.json with BLOOM's special tokens but no <sep>, like the real BLOOM one."""
  hf = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token='<unk>'))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=280, special_tokens=specials, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  hf.train_from_iterator(TEXTS, trainer=trainer)
  path = str(tmp_path / 'tokenizer.json')
  hf.save(path)
  return path


def test_loaded_tokenizer_without_sep_uses_eos(tmp_path):
  tok = tokenizer_lib.Tokenizer.load(_bloom_like(tmp_path, ['<unk>', '<s>', '</s>', '<pad>']))
  assert tok.sep_id == tok.eos_id == 2
  assert json.loads(tok.hf.to_str())['added_tokens'][3]['content'] == '<pad>'


def test_loaded_tokenizer_without_pad_is_rejected(tmp_path):
  with pytest.raises(ValueError, match='<pad>'):
    tokenizer_lib.Tokenizer.load(_bloom_like(tmp_path, ['<unk>', '<s>', '</s>']))


def test_token_bytes_zero_for_specials():
  tok = tokenizer_lib.train(TEXTS, 300)
  assert np.all(tok.token_bytes()[sorted(tok.special_ids)] == 0)
