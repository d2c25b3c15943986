"""TFDS builders: the built-in synthetic mixture and local files in standard formats.

Both write canonical examples (see `readers`) so every source looks alike downstream.
Local files are parsed eagerly in `_split_generators`, before TFDS starts writing, so a
`DataError` surfaces as itself; counts of skipped rows go into the dataset's metadata
(`info.metadata['problems']`) and survive in the prepared directory.

TFDS's `ConllUDatasetBuilder` is not used: it needs the `conllu` package and aborts on
the first malformed line, where we skip and count bad sentences.
"""

import contextlib
import dataclasses
import tempfile

import numpy as np
import tensorflow as tf
from etils import epath

tf.config.set_visible_devices([], 'GPU')
import tensorflow_datasets as tfds  # noqa: E402  (after hiding accelerators from TF)

tfds.disable_progress_bar()

from bloom_jax import task_types  # noqa: E402
from bloom_jax.data import readers, synthetic  # noqa: E402


def features(fields: dict[str, str]) -> tfds.features.FeaturesDict:
  """TFDS features for a task type's canonical fields ('text', or 'texts': a list)."""
  kinds = {'text': tfds.features.Text,
           'texts': lambda: tfds.features.Sequence(tfds.features.Text())}
  return tfds.features.FeaturesDict({name: kinds[kind]() for name, kind in fields.items()})


@contextlib.contextmanager
def own_temp_dir():
  """Builders made inside get a temporary folder of ours, removed on the way out.

  Constructing a builder whose dataset is not prepared yet makes TFDS create an empty
  folder in the system's temporary directory (`tmp*tfds`, for metadata it would fetch from
  its bucket) and never remove it: one per dataset built.
  """
  with tempfile.TemporaryDirectory(prefix='bloom_jax_tfds_') as folder:
    previous, tempfile.tempdir = tempfile.tempdir, folder
    try:
      yield
    finally:
      tempfile.tempdir = previous


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Pins `code_path` to this file: TFDS otherwise derives it through the optional
  `importlib_resources` package, which it does not declare as a dependency."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)


SYNTHETIC_TYPES = {'sentiment': task_types.CLASSIFICATION, 'tagging': task_types.TAGGING,
                   'summarize': task_types.GENERATION, 'lm': task_types.LM}
SYNTHETIC_SIZES = {'train': 20000, 'validation': 500, 'test': 500}


class SyntheticMultitask(_Builder):
  """Grammar-generated data for every head type; needs no download."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'One-sentence summaries; 20,000 training examples.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f'{h.name} task')
                     for n, h in SYNTHETIC_TYPES.items()]

  def _info(self):
    return self.dataset_info_from_configs(
        features=features(SYNTHETIC_TYPES[self.builder_config.name].fields),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(i) for i, split in enumerate(SYNTHETIC_SIZES)}

  def _generate_examples(self, split_index):
    split = list(SYNTHETIC_SIZES)[split_index]
    rows = synthetic.examples(self.builder_config.name, split_index, SYNTHETIC_SIZES[split], seed=0)
    yield from enumerate(rows)


@dataclasses.dataclass(eq=False)
class LocalConfig(tfds.core.BuilderConfig):
  """Which files make which split, and how to read them.

  `files` maps a split to a path; `holdout` carves a seeded fraction of train out as
  `validation` (classification) or the trailing fraction of the text (lm).
  """

  task_type: object = None  # a `bloom_jax.task_types` type
  reader: str = 'tsv'       # `readers.READERS`: conllu, tsv, csv, label_first, jsonl, text
  files: tuple = ()         # ((split, path), ...)
  labels: tuple | None = None
  options: tuple = ()       # reader keyword arguments as ((key, value), ...)
  holdout: float = 0.0
  holdout_seed: int = 0


def read_file(config: LocalConfig, path: str) -> tuple[list, readers.Problems]:
  return readers.read(config.reader, config.task_type.fields, path, config.labels,
                      dict(config.options))


def holdout_split(rows: list, fraction: float, seed: int, whole_text: bool) -> tuple[list, list]:
  """Deterministic (train, validation): a seeded sample of examples, or the text's tail."""
  if whole_text:
    text = rows[0]['text']
    end = int(len(text) * (1 - fraction))
    cut = text.rfind('\n', 0, end) + 1 or end  # whole lines when the text has any
    return [{'text': text[:cut]}], [{'text': text[cut:]}]
  order = np.random.default_rng(seed).permutation(len(rows))
  n_val = int(round(len(rows) * fraction))
  val = set(order[:n_val].tolist())
  return ([r for i, r in enumerate(rows) if i not in val],
          [r for i, r in enumerate(rows) if i in val])


def read_splits(config: LocalConfig) -> tuple[dict, dict]:
  """All splits' rows and their problems, with the hold-out applied."""
  rows, problems = {}, {}
  for split, path in config.files:
    rows[split], problems[split] = read_file(config, path)
  if config.holdout:
    rows['train'], rows['validation'] = holdout_split(
        rows['train'], config.holdout, config.holdout_seed, config.task_type.whole_text)
    problems['validation'] = readers.Problems()
  return rows, {s: p.as_dict() for s, p in problems.items()}


class LocalFiles(_Builder):
  """Local files of one task; the config (built per task) names them."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    # Unshuffled, so splits keep file order: eval order is the file's, and holdouts are stable.
    return self.dataset_info_from_configs(features=features(self.builder_config.task_type.fields),
                                          metadata=tfds.core.MetadataDict(),
                                          disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    rows, problems = read_splits(self.builder_config)
    self.info.metadata['problems'] = problems
    return {split: self._generate_examples(r) for split, r in rows.items()}

  def _generate_examples(self, rows):
    yield from enumerate(rows)
