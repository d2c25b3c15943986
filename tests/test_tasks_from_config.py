"""Tasks declared in a config or in a task module, without an edit to the library.

The unit tests check `tasks.configure`'s one-line errors, labels read from the training
file and the config `tasks.resolve` completes. The end-to-end tests write a small file of
each reader's format, declare a task on each in a config file (and register one more, of
a new task type, from a `task_modules` file), then run `bloom_jax.train`, `evaluate` and
`predict` as the user would, in subprocesses: evaluate and predict rebuild the tasks from
the config saved with the checkpoints alone.
"""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from bloom_jax import checkpointing, task_types, tasks
from bloom_jax.data import readers
from bloom_jax.errors import ConfigError, DataError
from tests.tiny import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -------------------------------------------------------------------------- data files

DET, ADJ, NOUN, VERB = ('the', 'a'), ('big', 'red', 'old'), ('dog', 'cat', 'car', 'tree'), \
    ('sees', 'likes', 'finds')


def _sentences(rng, n):
  out = []
  for _ in range(n):
    words = [(rng.choice(DET), 'DET')]
    words += [(rng.choice(ADJ), 'ADJ') for _ in range(rng.integers(0, 2))]
    words += [(rng.choice(NOUN), 'NOUN'), (rng.choice(VERB), 'VERB'), (rng.choice(DET), 'DET'),
              (rng.choice(NOUN), 'NOUN'), ('.', 'PUNCT')]
    out.append(words)
  return out


def _conllu(rng, n):
  blocks = []
  for i, words in enumerate(_sentences(rng, n)):
    lines = [f'# sent_id = {i}'] + [f'{j}\t{w}\t{w}\t{t}\t_\t_\t0\t_\t_\t_'
                                    for j, (w, t) in enumerate(words, 1)]
    blocks.append('\n'.join(lines))
  return '\n\n'.join(blocks) + '\n\n'


def _text(words):
  return ' '.join(w for w, _ in words)


def write_data(root):
  """One small file set per reader format, under `root` (the config's data.dir)."""
  rng = np.random.default_rng(0)

  def put(path, content):
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    with open(os.path.join(root, path), 'w', encoding='utf-8') as f:
      f.write(content)

  put('ud/train.conllu', _conllu(rng, 60))
  put('ud/dev.conllu', _conllu(rng, 8))
  put('ud/test.conllu', _conllu(rng, 8))
  rows = ['text,score'] + [f'{_text(s)},{sum(w in ADJ for w, _ in s)}'
                           for s in _sentences(rng, 60)]
  put('scores/train.csv', '\n'.join(rows[:50]) + '\n')
  put('scores/dev.csv', '\n'.join(rows[:1] + rows[50:]) + '\n')
  questions = {'LOC': 'where is the {} ?', 'NUM': 'how many {} are there ?',
               'HUM': 'who owns the {} ?'}
  lines = [f'{label}:x ' + q.format(rng.choice(NOUN)) for label, q in
           (list(questions.items())[i % 3] for i in range(80))]
  put('questions/train.txt', '\n'.join(lines + ['ZZZ:x what is an unknown label ?']) + '\n')
  mails = [json.dumps({'body': _text(s), 'subject': s[-2][0], 'alt': s[1][0]})
           for s in _sentences(rng, 60)]
  put('mail/train.jsonl', '\n'.join(mails[:50]) + '\n')
  put('mail/dev.jsonl', '\n'.join(mails[50:]) + '\n')
  put('prose/all.txt', '\n'.join(_text(s) for s in _sentences(rng, 120)) + '\n')
  polar = [('the dog likes the tree .', 'yes'), ('the cat sees a car .', 'no')]
  put('mod/train.tsv', 'sentence\tlabel\n' + ''.join(f'{t}\t{y}\n' for t, y in polar * 25))
  put('mod/dev.tsv', 'sentence\tlabel\n' + ''.join(f'{t}\t{y}\n' for t, y in polar * 4))


TASK_MODULE = '''\
"""Tasks of one project, registered for bloom_jax: --config.task_modules=my_tasks.py."""

from bloom_jax import task_types, tasks
from bloom_jax.data import sources
from bloom_jax.task_types.classification import Classification


class Polarity(Classification):
  """Classification under a name of its own: a task type added from a task module."""

  name = 'polarity'


POLARITY = Polarity()
task_types.TYPES[POLARITY.name] = POLARITY
tasks.REGISTRY['modtask'] = tasks.TaskSpec(
    'modtask', POLARITY, sources.Local(POLARITY, 'tsv', (
        ('train', 'mod/train.tsv'), ('validation', 'mod/dev.tsv')),
        options=(('text_column', 'sentence'), ('label_column', 'label'))),
    description='yes/no polarity; labels read from the training file')
'''

# The tasks the end-to-end run declares: every reader format, and every built-in type.
DECLARED = dict(
    pos_c=dict(type='tagging', reader='conllu', max_length=24,
               files=dict(train='ud/train.conllu', validation='ud/dev.conllu',
                          test='ud/test.conllu')),
    scores=dict(type='regression', reader='csv', max_length=24,
                files=dict(train='scores/train.csv', validation='scores/dev.csv'),
                options=dict(text_column='text', label_column='score')),
    questions=dict(type='classification', reader='label_first', max_length=24,
                   files=dict(train='questions/train.txt'), options=dict(label_sep=':'),
                   holdout=0.2, holdout_seed=1, labels=['LOC', 'NUM', 'HUM']),
    mail=dict(type='generation', reader='jsonl', max_length=24, max_target_length=4,
              files=dict(train='mail/train.jsonl', validation='mail/dev.jsonl'),
              options=dict(source_field='body', target_fields=['subject', 'alt'])),
    prose=dict(type='lm', reader='text', max_length=24, files=dict(train='prose/all.txt'),
               holdout=0.1),
    modtask=dict(max_length=24),
)

CONFIG_FILE = '''\
import ml_collections

from tests.tiny import tiny_config


def get_config(arg=None):
  del arg
  c = tiny_config()
  c.total_steps = 4
  c.data.dir = {data!r}
  c.data.tfds_dir = {tfds!r}
  c.task_modules = 'my_tasks.py'   # relative to the working directory of the training run
  c.best_metric = 'eval/questions/accuracy'
  c.tasks = ml_collections.ConfigDict({tasks!r})
  return c
'''


def _cli(*args, cwd=REPO):
  env = child_env(1, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


def _last_line(result) -> str:
  return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 4-step run of the declared tasks and the module's task, trained from a directory
  of its own with the task module given relative to it."""
  root = tmp_path_factory.mktemp('declared')
  data, project = root / 'data', root / 'project'
  write_data(str(data))
  project.mkdir()
  (project / 'my_tasks.py').write_text(TASK_MODULE)
  (project / 'config.py').write_text(CONFIG_FILE.format(
      data=str(data), tfds=str(root / 'tfds'), tasks=DECLARED))
  workdir = str(root / 'run')
  result = _cli('bloom_jax.train', '--config', 'config.py', '--workdir', workdir, cwd=project)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, project


# -------------------------------------------------------------------------- end to end


def test_train_saves_a_config_that_rebuilds_the_tasks(trained):
  workdir, project = trained
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  final = {k for line in lines for k in line}
  for metric in ('pos_c/word_accuracy', 'scores/pearson', 'questions/accuracy', 'mail/rougeL',
                 'prose/perplexity', 'modtask/accuracy'):
    assert f'eval/{metric}' in final, metric
  ckpt = checkpointing.Checkpointer(workdir, keep=10, create=False)
  saved = ckpt.restore_config(4)
  ckpt.close()
  assert saved['task_modules'] == str(project / 'my_tasks.py')   # made absolute
  # Labels read from the training files (sorted), written where evaluate/predict find them;
  # labels the config lists stay as listed.
  assert saved['tasks']['pos_c']['labels'] == ['ADJ', 'DET', 'NOUN', 'PUNCT', 'VERB']
  assert saved['tasks']['modtask']['labels'] == ['no', 'yes']
  assert saved['tasks']['questions']['labels'] == ['LOC', 'NUM', 'HUM']
  assert 'labels' not in saved['tasks']['mail'] and 'labels' not in saved['tasks']['scores']


def test_evaluate_rebuilds_declared_and_module_tasks(trained):
  workdir, _ = trained
  result = _cli('bloom_jax.evaluate', '--workdir', workdir, '--split', 'validation')
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.load(open(os.path.join(workdir, 'eval', 'validation_4.json')))
  for metric in ('pos_c/word_accuracy', 'scores/spearman', 'questions/macro_f1', 'mail/rouge1',
                 'prose/bits_per_byte', 'modtask/accuracy'):
    assert np.isfinite(written[f'validation/{metric}']), metric
  # The evaluation restores what training scored at its last step.
  last = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))][-1]
  assert written['validation/modtask/loss'] == pytest.approx(last['eval/modtask/loss'], rel=1e-4)


@pytest.mark.parametrize('task, text, check', [
    ('questions', 'where is the dog ?', lambda out: out.split('\t')[0] in ('LOC', 'NUM', 'HUM')),
    ('modtask', 'the dog likes the tree .', lambda out: out.split('\t')[0] in ('yes', 'no')),
    ('pos_c', 'the red cat sees a tree .', lambda out: len(out.split()) == 7),
])
def test_predict_with_declared_and_module_tasks(trained, task, text, check):
  workdir, _ = trained
  result = _cli('bloom_jax.predict', '--workdir', workdir, '--task', task, '--text', text)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout.strip().splitlines()[-1]
  assert check(out), out


def test_training_resumes_with_read_labels(trained, tmp_path):
  workdir, project = trained
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  result = _cli('bloom_jax.train', '--config', 'config.py', '--workdir', copy,
                '--config.total_steps=6', cwd=project)
  assert result.returncode == 0, result.stderr[-3000:]
  steps = [json.loads(x)['step'] for x in open(os.path.join(copy, 'metrics.jsonl'))]
  assert sorted(set(steps)) == [2, 4, 6] and steps.count(2) == 1   # resumed at 4


def test_a_missing_task_module_is_one_line(trained, tmp_path):
  _, project = trained
  result = _cli('bloom_jax.train', '--config', str(project / 'config.py'), '--workdir',
                str(tmp_path / 'run'), '--config.task_modules=nowhere/tasks.py', cwd=tmp_path)
  assert result.returncode == 2
  assert _last_line(result) == (
      f'train.py: error: task_modules: nowhere/tasks.py: no such file (relative paths start '
      f'at the working directory, {tmp_path})')


# -------------------------------------------------------------------------- configure


def _declare(**fields):
  entry = dict(type='classification', reader='tsv', files=dict(train='train.tsv'),
               options=dict(text_column='sentence', label_column='label'), max_length=32)
  return ml_collections.ConfigDict({'mine': {**entry, **fields}})


@pytest.mark.parametrize('fields, message', [
    (dict(type='ranking'), r"tasks\.mine\.type: unknown task type 'ranking'"),
    (dict(reader='xml'), r"tasks\.mine\.reader: 'xml' is not one of conllu, tsv"),
    (dict(reader='conllu'), r"tasks\.mine\.reader: 'conllu' does not read classification "
                            r'examples; use one of: tsv, csv, label_first, jsonl'),
    (dict(type='lm'), r"tasks\.mine\.reader: 'tsv' does not read lm examples; use one of: text"),
    (dict(files=dict(validation='dev.tsv')), r'tasks\.mine\.files\.train: required'),
    (dict(files=dict(train='a.tsv', dev='b.tsv')),
     r"tasks\.mine\.files\.dev: not a split; splits are train, validation, test"),
    (dict(files='train.tsv'), r'tasks\.mine\.files: a mapping of split to file path'),
    (dict(files=dict(train='')), r"tasks\.mine\.files\.train: a file path, got ''"),
    (dict(options=dict(text_column='sentence')),
     r'tasks\.mine\.options\.label_column: the tsv reader needs text_column, label_column'),
    (dict(options=dict(text_column='s', label_column='l', sep=';')),
     r'tasks\.mine\.options\.sep: the tsv reader takes text_column, label_column'),
    (dict(holdout=1.5), r'tasks\.mine\.holdout: a fraction of train in \[0, 1\)'),
    (dict(holdout=0.1, files=dict(train='a', validation='b')),
     r'tasks\.mine\.holdout: the task has a validation file already'),
    (dict(holdout_seed='x'), r"tasks\.mine\.holdout_seed: an integer, got 'x'"),
    (dict(labels=['a', 'a']), r'tasks\.mine\.labels: a label is listed twice'),
    (dict(labels='a,b'), r"tasks\.mine\.labels: a list of label names, got 'a,b'"),
    (dict(type='regression', labels=['a']), r'tasks\.mine\.labels: regression tasks take no '),
    (dict(rate='high'), r"tasks\.mine\.rate: expected int or float, got 'high'"),
    (dict(stopwords=1), r'tasks\.mine\.stopwords: expected bool, got 1'),
    (dict(option=dict()), r"tasks\.mine: unknown field\(s\) \['option'\]"),
    (dict(reader=None), r"tasks\.mine\.reader: None is not one of"),
])
def test_declared_task_errors_name_the_key(fields, message):
  with pytest.raises(ConfigError, match=message):
    tasks.configure(_declare(**fields), data_dir='')


def test_declared_names_must_be_new_and_plain():
  entry = dict(_declare()['mine'])
  with pytest.raises(ConfigError, match=r'tasks\.sst2\.type: sst2 is a registered task'):
    tasks.configure(ml_collections.ConfigDict({'sst2': entry}))
  with pytest.raises(ConfigError, match=r'tasks\.a/b: a declared task needs a name of letters'):
    tasks.configure(ml_collections.ConfigDict({'a/b': entry}))
  with pytest.raises(ConfigError, match=r'tasks\.nope: unknown task; registered: .* \(or '
                                        r'declare one: give its type, reader and files\)'):
    tasks.configure(ml_collections.ConfigDict({'nope': dict(rate=1.0)}))


def test_every_reader_is_declarable_for_its_types():
  fits = {name: sorted(t for t, tt in task_types.TYPES.items()
                       if readers.reader_for(name, tt.fields))
          for name in readers.READERS}
  assert fits == {'conllu': ['tagging'], 'tsv': ['classification', 'regression'],
                  'csv': ['classification', 'regression'],
                  'label_first': ['classification', 'regression'],
                  'jsonl': ['classification', 'generation', 'regression'], 'text': ['lm']}


def test_labels_are_read_from_train_and_written_into_the_config(tmp_path):
  (tmp_path / 'train.tsv').write_text('sentence\tlabel\nb text\tzeta\nc text\talpha\n'
                                      '\tbeta\nd text\tzeta\n')   # an empty text: no label
  config = ml_collections.ConfigDict(dict(task_modules='', tasks=_declare()))
  config.lock()
  with pytest.raises(ConfigError, match=r'tasks\.mine\.labels: not given, and not read'):
    tasks.configure(config.tasks)
  specs = tasks.resolve(config, str(tmp_path))
  assert specs['mine'].labels == ('alpha', 'zeta')
  assert list(config.tasks.mine.labels) == ['alpha', 'zeta']
  # The config as a checkpoint saves it (JSON) rebuilds the same task and the same data
  # fingerprint (which keys the tokenizer and the prepared data) without reading labels.
  saved = ml_collections.ConfigDict(json.loads(config.to_json()))
  again = tasks.configure(saved.tasks)
  assert again == specs
  assert again['mine'].source.fingerprint(str(tmp_path)) == \
      specs['mine'].source.fingerprint(str(tmp_path))
  # Registered tasks with labels of their own get none written.
  config = ml_collections.ConfigDict(dict(tasks=dict(sentiment=dict(max_length=32))))
  tasks.resolve(config, '')
  assert 'labels' not in config.tasks.sentiment


def test_reading_labels_needs_the_files(tmp_path):
  with pytest.raises(DataError, match=r'task .mine. reads local files: set data\.dir'):
    tasks.configure(_declare(), data_dir='')
  with pytest.raises(DataError, match=rf'{tmp_path}/train\.tsv: file not found'):
    tasks.configure(_declare(), data_dir=str(tmp_path))
  absolute = str(tmp_path / 'elsewhere.tsv')
  with open(absolute, 'w') as f:
    f.write('sentence\tlabel\nsome text\tx\n')
  specs = tasks.configure(_declare(files=dict(train=absolute)), data_dir='')
  assert specs['mine'].labels == ('x',)


def test_task_modules_are_imported_once_and_made_absolute(tmp_path, monkeypatch):
  monkeypatch.setattr(tasks, 'REGISTRY', dict(tasks.REGISTRY))
  monkeypatch.setattr(task_types, 'TYPES', dict(task_types.TYPES))
  monkeypatch.setattr(tasks, '_MODULES', {})
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'my_tasks.py').write_text(TASK_MODULE)
  (tmp_path / 'count.py').write_text("with open(__file__ + '.log', 'a') as f: f.write('x')\n")
  (tmp_path / 'mod').mkdir()
  for split in ('train', 'dev'):
    (tmp_path / 'mod' / f'{split}.tsv').write_text('sentence\tlabel\nx y\tyes\n')
  config = ml_collections.ConfigDict(dict(task_modules='my_tasks.py, count.py',
                                          tasks=dict(modtask=dict(max_length=32))))
  specs = tasks.resolve(config, str(tmp_path))
  assert config.task_modules == f'{tmp_path}/my_tasks.py,{tmp_path}/count.py'
  assert specs['modtask'].type is task_types.TYPES['polarity']
  assert list(config.tasks.modtask.labels) == ['yes']
  tasks.resolve(config, str(tmp_path))
  assert (tmp_path / 'count.py.log').read_text() == 'x'   # imported once
  for paths, message in [('gone.py', 'task_modules: gone.py: no such file'),
                         ('mod/train.tsv', r'task_modules: mod/train\.tsv: not a Python file')]:
    with pytest.raises(ConfigError, match=message):
      tasks.load_modules(paths)
