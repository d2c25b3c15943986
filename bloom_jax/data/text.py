"""Text clean-up shared by every task: the same function runs on train, eval and inference."""

import re
import unicodedata

# Function words of English. Removing them usually hurts transformers, which use them
# as syntax; the option exists for bag-of-words style baselines and ablations.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these they
this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())

_SPACES = re.compile(r'[^\S\n]+')
_NEWLINES = re.compile(r'\n{3,}')


def clean(text: str, keep_newlines: bool = False) -> str:
  """NFKC-normalises and collapses whitespace (keeping line structure if asked)."""
  text = unicodedata.normalize('NFKC', text).replace('\r\n', '\n').replace('\r', '\n')
  if not keep_newlines:
    return ' '.join(text.split())
  lines = (_SPACES.sub(' ', line).strip() for line in text.split('\n'))
  return _NEWLINES.sub('\n\n', '\n'.join(lines)).strip('\n')


def remove_stopwords(text: str) -> str:
  return ' '.join(w for w in text.split(' ') if w.lower() not in STOPWORDS)
