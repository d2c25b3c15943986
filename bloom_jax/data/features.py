"""Canonical examples -> fixed-shape token arrays, one function per head.

Every function returns `(arrays, info)`: `arrays` maps a feature name to an array with
one row per example (the batch format in docs/data.md), `info` has per-example `length`
(tokens before truncation) and `truncated` flags for the statistics.

Layouts (L = max_length, right padding with pad_id):
  classification  <s> text </s>
  tagging         <s> word_1 word_2 ... </s>     tag on each word's first subword
  generation      <s> source <sep> target </s>   prefix = <s> source <sep>
  lm              windows of L+1 tokens of the document stream (documents end with </s>),
                  inputs w[:-1], targets w[1:]; consecutive windows overlap by one token
                  so every token is predicted exactly once
"""

import numpy as np

from bloom_jax.tokenizer import Tokenizer


def _pad(rows: list[list[int]], length: int, value: int, left: bool = False) -> np.ndarray:
  out = np.full((len(rows), length), value, np.int32)
  for i, r in enumerate(rows):
    if r:
      if left:
        out[i, length - len(r):] = r
      else:
        out[i, :len(r)] = r
  return out


def _mask(lengths, length: int) -> np.ndarray:
  return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def classification(tok: Tokenizer, texts: list[str], labels: list[int] | None,
                   max_length: int) -> tuple[dict, dict]:
  body = tok.encode_batch(texts)
  room = max_length - 2
  rows = [[tok.bos_id] + ids[:room] + [tok.eos_id] for ids in body]
  out = {'input_ids': _pad(rows, max_length, tok.pad_id),
         'attention_mask': _mask([len(r) for r in rows], max_length)}
  if labels is not None:
    out['targets'] = np.asarray(labels, np.int32).reshape(len(rows))
    out['weights'] = np.ones(len(rows), np.float32)
  lengths = np.array([len(ids) + 2 for ids in body], np.int32)
  return out, {'length': lengths, 'truncated': lengths > max_length}


def word_pieces(tok: Tokenizer, sentences: list[list[str]]) -> list[list[list[int]]]:
  """Subword ids of each word as it appears in running text (space before all but the first)."""
  keys = sorted({(w if i == 0 else ' ' + w) for words in sentences for i, w in enumerate(words)})
  table = dict(zip(keys, tok.encode_batch(keys), strict=True))
  return [[table[w if i == 0 else ' ' + w] for i, w in enumerate(words)] for words in sentences]


def tagging(tok: Tokenizer, sentences: list[list[str]], tags: list[list[int]] | None,
            max_length: int) -> tuple[dict, dict]:
  n = len(sentences)
  ids = np.full((n, max_length), tok.pad_id, np.int32)
  targets = np.zeros((n, max_length), np.int32)
  first = np.zeros((n, max_length), np.float32)
  lengths = np.zeros(n, np.int32)
  room = max_length - 2
  for i, pieces in enumerate(word_pieces(tok, sentences)):
    flat, starts = [tok.bos_id], []
    for piece in pieces:
      starts.append(len(flat) if piece else -1)
      flat.extend(piece)
    lengths[i] = len(flat) + 1
    row = flat[:room + 1] + [tok.eos_id]
    ids[i, :len(row)] = row
    for w, s in enumerate(starts):
      if 0 < s <= room:
        first[i, s] = 1.0
        if tags is not None:
          targets[i, s] = tags[i][w]
  # `weights` marks first subwords, so it also maps predictions back to words at inference.
  out = {'input_ids': ids, 'attention_mask': _mask(np.minimum(lengths, max_length), max_length),
         'num_words': np.array([len(s) for s in sentences], np.int32), 'weights': first}
  if tags is not None:
    out['targets'] = targets
  return out, {'length': lengths, 'truncated': lengths > max_length}


def prompts(tok: Tokenizer, sources: list[str], prompt_length: int) -> tuple[list, np.ndarray]:
  """`<s> source <sep>` per example (source truncated to fit) and the untruncated lengths."""
  body = tok.encode_batch(sources)
  return ([[tok.bos_id] + ids[:prompt_length - 2] + [tok.sep_id] for ids in body],
          np.array([len(ids) + 2 for ids in body], np.int32))


def generation(tok: Tokenizer, sources: list[str], targets: list[str] | None, max_length: int,
               target_length: int) -> tuple[dict, dict]:
  """Prefix-LM rows; targets[i] = input_ids[i+1], weighted on target tokens and the final eos."""
  prompt_length = max_length - target_length - 1
  heads, src_lengths = prompts(tok, sources, prompt_length)
  out = {'prompt_ids': _pad(heads, prompt_length, tok.pad_id, left=True),
         'prompt_mask': _mask([len(h) for h in heads], prompt_length)[:, ::-1].copy()}
  if targets is None:
    out['input_ids'] = _pad(heads, max_length, tok.pad_id)
    out['attention_mask'] = out['prefix_mask'] = _mask([len(h) for h in heads], max_length)
    return out, {'length': src_lengths, 'truncated': src_lengths > prompt_length}
  tails = tok.encode_batch(targets)
  seqs = [h + t[:target_length] + [tok.eos_id] for h, t in zip(heads, tails, strict=True)]
  ids = _pad(seqs, max_length, tok.pad_id)
  seq_len = np.array([len(s) for s in seqs])
  prefix_len = np.array([len(h) for h in heads])
  pos = np.arange(max_length)[None, :]
  out.update(
      input_ids=ids,
      attention_mask=_mask(seq_len, max_length),
      prefix_mask=_mask(prefix_len, max_length),
      targets=np.concatenate([ids[:, 1:], np.full((len(seqs), 1), tok.pad_id, np.int32)], 1),
      weights=((pos >= prefix_len[:, None] - 1) & (pos < seq_len[:, None] - 1)).astype(np.float32))
  tgt_lengths = np.array([len(t) for t in tails], np.int32)
  lengths = src_lengths + tgt_lengths + 1
  truncated = (src_lengths > prompt_length) | (tgt_lengths > target_length)
  return out, {'length': lengths, 'truncated': truncated}


def lm(tok: Tokenizer, texts: list[str], max_length: int, keep_partial: bool,
       token_bytes: np.ndarray) -> tuple[dict, dict]:
  """Fixed windows of the concatenated stream; no packing mask is needed (plain causal LM).

  Training drops the final partial window; evaluation keeps it, padded and masked.
  """
  docs = tok.encode_batch(texts)
  stream = np.array([i for ids in docs for i in ids + [tok.eos_id]], np.int32)
  n = max(len(stream) - 1, 0)
  count = (-(-n // max_length)) if keep_partial else n // max_length
  ids = np.full((count, max_length + 1), tok.pad_id, np.int32)
  valid = np.zeros((count, max_length + 1), np.int32)
  for w in range(count):
    piece = stream[w * max_length: w * max_length + max_length + 1]
    ids[w, :len(piece)] = piece
    valid[w, :len(piece)] = 1
  weights = valid[:, 1:].astype(np.float32)
  out = {'input_ids': ids[:, :-1], 'attention_mask': valid[:, :-1], 'targets': ids[:, 1:],
         'weights': weights,
         'target_bytes': (token_bytes[ids[:, 1:]] * weights).sum(1).astype(np.int32)}
  doc_lengths = np.array([len(d) + 1 for d in docs], np.int32)
  return out, {'length': doc_lengths, 'truncated': np.zeros(len(texts), bool)}
