"""Local-file readers: every bad-data case is skipped and counted, or a one-line DataError."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bloom_jax.data import readers
from bloom_jax.data.readers import DataError

UPOS = ('DET', 'NOUN', 'VERB', 'PUNCT')


def _write(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return str(path)


def _token(i, form, tag):
  return f'{i}\t{form}\t{form}\t{tag}\t_\t_\t0\troot\t_\t_'


GOOD = '\n'.join(['# sent_id = 1', _token(1, 'the', 'DET'), _token(2, 'dog', 'NOUN'),
                  '2-3\tdon\'t\t_\t_\t_\t_\t_\t_\t_\t_', _token(3, 'barks', 'VERB'),
                  '3.1\tx\t_\t_\t_\t_\t_\t_\t_\t_', _token(4, '.', 'PUNCT'), ''])


def test_conllu_skips_ranges_and_empty_nodes(tmp_path):
  rows, problems = readers.read_conllu(_write(tmp_path, 'a.conllu', GOOD + '\n'), UPOS)
  assert rows == [{'words': ['the', 'dog', 'barks', '.'], 'tags': ['DET', 'NOUN', 'VERB', 'PUNCT']}]
  assert not problems.counts


@pytest.mark.parametrize('bad_line, kind', [
    ('3\tbarks\tbark', 'malformed_line'),                       # too few columns
    (_token('x', 'barks', 'VERB'), 'malformed_line'),            # non-numeric ID
    (_token(3, 'barks', '_'), 'missing_label'),
    (_token(3, 'barks', 'VRB'), 'unknown_label'),
])
def test_conllu_drops_bad_sentences(tmp_path, bad_line, kind):
  bad = '\n'.join([_token(1, 'a', 'DET'), _token(2, 'dog', 'NOUN'), bad_line, ''])
  rows, problems = readers.read_conllu(_write(tmp_path, 'a.conllu', GOOD + '\n' + bad), UPOS)
  assert len(rows) == 1
  assert problems.counts[kind] == 1 and problems.counts['dropped_sentence'] == 1
  assert 'a.conllu:' in problems.first[kind]


def test_conllu_without_valid_sentence_names_file_and_line(tmp_path):
  path = _write(tmp_path, 'b.conllu', '1\tonly\tthree\n\n')
  with pytest.raises(DataError, match=r'b\.conllu: no valid rows .*b\.conllu:1'):
    readers.read_conllu(path, UPOS)


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match='file not found'):
    readers.read_conllu(str(tmp_path / 'nope.conllu'), UPOS)


def test_tsv_bad_rows_are_counted(tmp_path):
  content = 'sentence\tlabel\ngood film \t1\n\t0\nbad\t7\nno label\t\ntoo\tmany\tcols\nok\t0\n'
  rows, problems = readers.read_delimited(_write(tmp_path, 't.tsv', content), ('0', '1'),
                                          delimiter='\t', text_column='sentence',
                                          label_column='label')
  assert rows == [{'text': 'good film', 'label': '1'}, {'text': 'ok', 'label': '0'}]
  assert problems.counts == {'empty_text': 1, 'unknown_label': 1, 'missing_label': 1,
                             'malformed_line': 1}
  assert problems.first['unknown_label'].endswith("t.tsv:4: '7'")


def test_csv_with_quotes(tmp_path):
  content = 'text,label\n"a, quoted ""text""",pos\nplain,neg\n'
  rows, _ = readers.read_delimited(_write(tmp_path, 'c.csv', content), ('neg', 'pos'),
                                   delimiter=',', text_column='text', label_column='label')
  assert rows[0] == {'text': 'a, quoted "text"', 'label': 'pos'}


def test_tsv_missing_column_is_fatal(tmp_path):
  with pytest.raises(DataError, match=r'h\.tsv:1: header'):
    readers.read_delimited(_write(tmp_path, 'h.tsv', 'text\tother\nx\ty\n'), None,
                           delimiter='\t', text_column='sentence', label_column='label')


def test_non_utf8_bytes_are_repaired_and_counted(tmp_path):
  path = _write(tmp_path, 'trec', b'LOC:city What sister\xf0city ?\nNUM:date When ?\n')
  rows, problems = readers.read_label_first(path, ('LOC', 'NUM'), label_sep=':')
  assert [r['label'] for r in rows] == ['LOC', 'NUM'] and '\ufffd' in rows[0]['text']
  assert problems.counts == {'not_utf8': 1} and 'trec:1' in problems.first['not_utf8']


def test_label_first_bad_rows(tmp_path):
  path = _write(tmp_path, 'trec', 'LOC:city Where ?\nFOO:bar What ?\nNUM:date\n\n')
  rows, problems = readers.read_label_first(path, ('LOC', 'NUM'), label_sep=':')
  assert len(rows) == 1 and problems.counts == {'unknown_label': 1, 'empty_text': 1}


def test_jsonl_generation_keeps_every_reference(tmp_path):
  lines = [json.dumps({'body': 'b1', 'subject': 's1', 'ann0': 'a0', 'ann2': 'a2'}),
           '{broken', json.dumps({'body': '', 'subject': 's'}), json.dumps({'body': 'b'}),
           json.dumps(['not', 'an', 'object'])]
  rows, problems = readers.read_jsonl_generation(
      _write(tmp_path, 'g.jsonl', '\n'.join(lines)), source_field='body',
      target_fields=('subject', 'ann0', 'ann1', 'ann2'))
  assert rows == [{'source': 'b1', 'targets': ['s1', 'a0', 'a2']}]
  assert problems.counts == {'malformed_line': 2, 'empty_text': 1, 'missing_label': 1}


def test_jsonl_classification(tmp_path):
  lines = [json.dumps({'text': 'x', 'label': 1}), json.dumps({'text': 'y'})]
  rows, problems = readers.read_jsonl_classification(
      _write(tmp_path, 'c.jsonl', '\n'.join(lines)), ('0', '1'), text_field='text',
      label_field='label')
  assert rows == [{'text': 'x', 'label': '1'}] and problems.counts == {'missing_label': 1}


@pytest.mark.parametrize('content', [b'', b'\n\n  \n'])
def test_empty_files_are_fatal(tmp_path, content):
  path = _write(tmp_path, 'blank', content)
  for read in (lambda: readers.read_conllu(path, UPOS), lambda: readers.read_text(path),
               lambda: readers.read_label_first(path, None),
               lambda: readers.read_jsonl_generation(path, source_field='a', target_fields=('b',)),
               lambda: readers.read_delimited(path, None, delimiter='\t', text_column='a',
                                              label_column=None)):
    with pytest.raises(DataError, match=r'^\S*blank: (no valid rows|empty file|no text)$'):
      read()


def _all_readers(path):
  return [
      lambda: readers.read_conllu(path, UPOS),
      lambda: readers.read_conllu(path, None),
      lambda: readers.read_delimited(path, ('0', '1'), delimiter='\t', text_column='sentence',
                                     label_column='label'),
      lambda: readers.read_delimited(path, None, delimiter=',', text_column='text',
                                     label_column='label'),
      lambda: readers.read_label_first(path, None, label_sep=':'),
      lambda: readers.read_jsonl_classification(path, None, text_field='text', label_field='label'),
      lambda: readers.read_jsonl_generation(path, source_field='body', target_fields=('subject',)),
      lambda: readers.read_text(path),
  ]


def _only_data_error_or_success(path):
  for read in _all_readers(path):
    try:
      rows, problems = read()
    except DataError as e:
      assert '\n' not in str(e) and path in str(e)
    else:
      assert rows and isinstance(problems, readers.Problems)


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(tmp_path, data):
  _only_data_error_or_success(_write(tmp_path, 'fuzz', data))


_LINE = st.one_of(
    st.just(''), st.just('# comment'), st.sampled_from(GOOD.split('\n')),
    st.lists(st.text(alphabet='ab1-._\t ', max_size=6), min_size=1, max_size=12).map('\t'.join))


@FUZZ
@given(st.lists(_LINE, max_size=20), st.sampled_from(['utf-8', 'utf-16', 'latin-1']))
def test_broken_conllu_and_wrong_encodings(tmp_path, lines, encoding):
  text = '\n'.join(lines) + '\u00e9\u4e2d'
  _only_data_error_or_success(_write(tmp_path, 'fuzz.conllu',
                                     text.encode(encoding, errors='replace')))


def test_reader_errors_are_the_library_data_error():
  from bloom_jax import errors
  assert DataError is errors.DataError and issubclass(DataError, ValueError)
