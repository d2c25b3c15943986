"""Byte-level BPE tokenizer with BLOOM's special-token ids.

Either trained deterministically on a mixture's training text or loaded from any
`tokenizer.json` (for example BLOOM's own). Special ids follow BLOOM: `<unk>`=0,
`<s>`=1, `</s>`=2, `<pad>`=3; trained tokenizers add `<sep>`=4. A loaded tokenizer
without `<sep>` separates source and target with `</s>`.
"""

import functools
import hashlib
import os
from collections.abc import Iterable

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ('<unk>', '<s>', '</s>', '<pad>', '<sep>')


class Tokenizer:
  """A thin wrapper fixing the special tokens every task relies on."""

  def __init__(self, hf: tokenizers.Tokenizer):
    self.hf = hf
    ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t in SPECIAL_TOKENS[:4] if ids[t] is None]
    if missing:
      raise ValueError(f'tokenizer lacks special tokens {missing}')
    self.unk_id, self.bos_id, self.eos_id, self.pad_id = (ids[t] for t in SPECIAL_TOKENS[:4])
    self.sep_id = ids['<sep>'] if ids['<sep>'] is not None else self.eos_id
    self.special_ids = frozenset(i for i in ids.values() if i is not None)

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    return self.hf.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

  def encode_after_space(self, texts: list[str]) -> list[list[int]]:
    """Each text tokenized as it is after a space in running text.

    Byte-level BPE spells a word's leading space into its first token, and the
    pre-tokenizer adds no space before a text (add_prefix_space=False, as in BLOOM's own
    tokenizer), so a word opening a text has other tokens than the same word after a space
    ('Service' -> S|erv|ice, ' Service' -> ĠServ|ice). Text that follows other tokens in
    one sequence is encoded this way, so that a word has the same tokens wherever it
    occurs; `strip_space` removes the space from decoded text. (A tokenizer that adds a
    prefix space itself adds none to a text that starts with one.) An empty text has no
    tokens.
    """
    return self.encode_batch([' ' + t if t else t for t in texts])

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def fingerprint(self) -> str:
    return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens), for bits per byte."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      piece = self.hf.id_to_token(i)
      if piece is None or i in self.special_ids:
        continue
      # A byte-level piece spells one byte per character; other models need a decode.
      out[i] = len(piece) if set(piece) <= alphabet else len(self.decode([i]).encode())
    return out

  @functools.cached_property
  def space_prefixed(self) -> np.ndarray:
    """[vocab] bool: the token spells a leading space ('Ġ' in a byte-level BPE, '▁' in a
    SentencePiece model), so in running text it opens a whitespace word."""
    out = np.zeros(self.vocab_size, bool)
    for i in range(self.vocab_size):
      piece = self.hf.id_to_token(i)
      out[i] = i not in self.special_ids and piece is not None and piece[:1] in ('Ġ', '▁')
    return out

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    self.hf.save(tmp)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    return cls(tokenizers.Tokenizer.from_file(path))


def strip_space(decoded: str) -> str:
  """Text decoded from tokens that `Tokenizer.encode_after_space` made (or a model learnt
  to produce from them), without that leading space."""
  return decoded.removeprefix(' ')


def train(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Trains a byte-level BPE; the same texts in the same order give the same merges."""
  hf = tokenizers.Tokenizer(models.BPE(unk_token='<unk>'))
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
  hf.train_from_iterator(texts, trainer=trainer)
  return Tokenizer(hf)


