"""A small English-like grammar that exercises all four heads with learnable structure.

Sentences are `NP VERB NP [ADP NP] .` with `NP = DET ADJ* NOUN`. Some words are both
nouns and verbs ("watch", "fish", ...): their tag is decided by the position, so the
tagger has to read context. Sentiment comes from positive vs negative adjectives and
verbs, always with a clear majority. The summary of a sentence is its nouns in order
(a copy task: small models learn it after a plateau of a few thousand examples).
Everything is a pure function of the seed.
"""

import numpy as np

DET = ('the', 'a', 'every', 'this', 'that', 'some')
ADJ = ('big', 'small', 'red', 'old', 'young', 'quiet', 'tall', 'green')
POS_ADJ = ('good', 'lovely', 'wonderful', 'happy', 'brilliant')
NEG_ADJ = ('bad', 'awful', 'terrible', 'sad', 'ugly')
NOUN = ('cat', 'dog', 'bird', 'house', 'car', 'tree', 'river', 'child', 'teacher', 'garden',
        'boat', 'city')
VERB = ('sees', 'finds', 'follows', 'meets', 'paints', 'visits')
POS_VERB = ('loves', 'enjoys', 'admires')
NEG_VERB = ('hates', 'fears', 'ruins')
# Both nouns and verbs: the tagger must use position to tell them apart.
AMBIGUOUS = ('watch', 'fish', 'light', 'walk', 'train')
ADP = ('near', 'under', 'with', 'behind')

TAGS = ('ADJ', 'ADP', 'DET', 'NOUN', 'PUNCT', 'VERB')
SENTIMENT_LABELS = ('negative', 'positive')


def _pick(rng, words):
  # The same draw as rng.choice(words), without converting the tuple to an array each time.
  return words[rng.integers(len(words))]


def _noun_phrase(rng, polar_adjs):
  words = [(_pick(rng, DET), 'DET')]
  for _ in range(rng.integers(0, 3)):
    words.append((_pick(rng, ADJ), 'ADJ'))
  words.extend((a, 'ADJ') for a in polar_adjs)
  nouns = NOUN + AMBIGUOUS
  words.append((_pick(rng, nouns), 'NOUN'))
  return words


def sentence(rng: np.random.Generator, polarity: int | None = None) -> list[tuple[str, str]]:
  """One tagged sentence; with a polarity (0 neg, 1 pos), it carries more words of that side."""
  slots = {'subj': [], 'obj': [], 'verb': None}
  if polarity is not None:
    adjs, verbs = (POS_ADJ, POS_VERB) if polarity else (NEG_ADJ, NEG_VERB)
    other_adjs = NEG_ADJ if polarity else POS_ADJ
    strong = int(rng.integers(1, 3))
    for _ in range(strong):
      if rng.random() < 0.3 and slots['verb'] is None:
        slots['verb'] = _pick(rng, verbs)
      else:
        slots[_pick(rng, ('subj', 'obj'))].append(_pick(rng, adjs))
    if strong == 2 and rng.random() < 0.5:
      slots['subj'].append(_pick(rng, other_adjs))
  if slots['verb'] is None:
    verb_pool = VERB + AMBIGUOUS
    slots['verb'] = _pick(rng, verb_pool)
  words = _noun_phrase(rng, slots['subj']) + [(slots['verb'], 'VERB')]
  words += _noun_phrase(rng, slots['obj'])
  if rng.random() < 0.4:
    words += [(_pick(rng, ADP), 'ADP')] + _noun_phrase(rng, [])
  return words + [('.', 'PUNCT')]


def example(task: str, rng: np.random.Generator) -> dict:
  """One canonical example of `task` ('sentiment', 'tagging', 'summarize' or 'lm')."""
  if task == 'sentiment':
    label = int(rng.integers(2))
    return {'text': ' '.join(w for w, _ in sentence(rng, label)), 'label': SENTIMENT_LABELS[label]}
  if task == 'tagging':
    words = sentence(rng)
    return {'words': [w for w, _ in words], 'tags': [t for _, t in words]}
  if task == 'summarize':
    words = sentence(rng)
    nouns = ' '.join(w for w, t in words if t == 'NOUN')
    return {'source': ' '.join(w for w, _ in words), 'targets': [nouns]}
  if task == 'lm':
    return {'text': ' '.join(' '.join(w for w, _ in sentence(rng)) for _ in range(3))}
  raise ValueError(f'unknown synthetic task {task!r}')


def examples(task: str, split_index: int, count: int, seed: int) -> list[dict]:
  rng = np.random.default_rng([seed, split_index, sum(map(ord, task))])
  return [example(task, rng) for _ in range(count)]
