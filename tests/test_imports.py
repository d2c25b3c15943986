"""Arrows point one way: no import cycles in the package, no entry point imported by another
module, and `import bloom_jax` (with its errors and CLI plumbing) loads no framework and
changes nothing.

The graph is read from the source with `ast`, so it holds function-level imports too: an
import inside a function is a dependency all the same, only a later one.
"""

import ast
import collections
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'bloom_jax')

# Besides any module with an `if __name__ == '__main__':` block (and every __main__ module).
ENTRY_POINTS = ('bloom_jax.train', 'bloom_jax.evaluate', 'bloom_jax.predict', 'bloom_jax.sweep',
                'bloom_jax.hf.__main__', 'bloom_jax.data.__main__')


def package_modules(package_dir: str) -> dict[str, str]:
  """Dotted module name -> source path, for every .py file under `package_dir`."""
  parent = os.path.dirname(os.path.abspath(package_dir))
  modules = {}
  for directory, _, files in os.walk(package_dir):
    for file in files:
      if file.endswith('.py'):
        path = os.path.join(directory, file)
        name = os.path.relpath(path, parent)[:-len('.py')].replace(os.sep, '.')
        modules[name.removesuffix('.__init__')] = path
  return modules


def _imported_names(module: str, path: str, tree: ast.Module) -> list[str]:
  """Every name an import statement anywhere in the module asks for: `from X import Y`
  gives X and X.Y (which counts only where X.Y is a module); relative names made absolute."""
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names += [base] + [f'{base}.{alias.name}' for alias in node.names]
  return names


def import_graph(package_dir: str) -> dict[str, set[str]]:
  """Module -> the package's modules it imports. An import of a name inside a module is an
  edge to that module; edges to the module itself or to its own parent packages are left
  out (`from bloom_jax.data import readers` in bloom_jax.data.pipeline)."""
  modules = package_modules(package_dir)
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    graph[module] = set()
    for name in _imported_names(module, path, tree):
      while name and name not in modules:
        name = name.rpartition('.')[0]
      if name and name != module and not module.startswith(name + '.'):
        graph[module].add(name)
  return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  """The modules reached from `start` by one or more edges."""
  seen, todo = set(), list(graph[start])
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo += graph[module]
  return seen


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
  """The shortest path start -> ... -> start through the modules `within`."""
  previous = {}
  queue = collections.deque([start])
  while queue:
    module = queue.popleft()
    for target in sorted(graph[module] & within):
      if target == start:
        path = [module]
        while path[-1] != start:
          path.append(previous[path[-1]])
        return [*reversed(path), start]
      if target not in previous:
        previous[target] = module
        queue.append(target)
  raise AssertionError(f'{start} is on no cycle')


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One shortest cycle per group of modules that import each other, as a closed path."""
  reach = {module: _reachable(graph, module) for module in graph}
  cycles, done = [], set()
  for module in sorted(graph):
    if module in reach[module] and module not in done:
      group = {other for other in reach[module] if module in reach[other]}
      done |= group
      cycles.append(_shortest_cycle(graph, module, group))
  return cycles


def _has_main_block(path: str) -> bool:
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in tree.body:
    if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
      sides = [node.test.left, *node.test.comparators]
      names = {s.id for s in sides if isinstance(s, ast.Name)}
      values = {s.value for s in sides if isinstance(s, ast.Constant)}
      if names == {'__name__'} and values == {'__main__'}:
        return True
  return False


def entry_points(package_dir: str) -> set[str]:
  modules = package_modules(package_dir)
  found = {m for m, path in modules.items() if m.endswith('.__main__') or _has_main_block(path)}
  return found | (set(ENTRY_POINTS) & set(modules))


def entry_point_imports(package_dir: str) -> list[str]:
  """'A imports the entry point B' for every module of the package that imports one."""
  graph = import_graph(package_dir)
  entries = entry_points(package_dir)
  return [f'{module} imports the entry point {target}'
          for module in sorted(graph) for target in sorted(graph[module] & entries)]


def _write_package(root, files: dict[str, str]) -> str:
  for name, source in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
  return str(root / 'pkg')


# --------------------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------------------


def test_the_package_has_no_import_cycle():
  cycles = import_cycles(import_graph(PACKAGE))
  assert not cycles, 'import cycles: ' + '; '.join(' -> '.join(c) for c in cycles)


def test_no_module_imports_an_entry_point():
  # What entry points share lives in a library module; an entry point is imported by nothing.
  offenders = entry_point_imports(PACKAGE)
  assert not offenders, '; '.join(offenders)


# Runs as `python -m bloom_jax.PROGRAM` has it while the package is imported (sys.argv[0]
# is '-m' then), and prints 'start' first: a process that starts again prints it twice.
PROBE = r'''
import json, os, sys
print('start', flush=True)
environ = dict(os.environ)
sys.argv[0] = '-m'
import bloom_jax, bloom_jax.errors, bloom_jax.cli
changed = sorted(k for k in {*environ, *os.environ} if environ.get(k) != os.environ.get(k))
print(json.dumps({'frameworks': sorted({'jax', 'tensorflow', 'flax'} & set(sys.modules)),
                  'changed': changed, 'GLIBC_TUNABLES': os.environ.get('GLIBC_TUNABLES')}))
'''


def test_importing_the_package_errors_and_cli_loads_no_framework_and_changes_nothing():
  unset = ('GLIBC_TUNABLES', 'TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')
  env = {k: v for k, v in os.environ.items() if k not in unset}
  out = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**env, 'PYTHONPATH': ROOT})
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[:-1] == ['start'], f'the process started again: {out.stdout}'
  assert json.loads(lines[-1]) == {'frameworks': [], 'changed': [], 'GLIBC_TUNABLES': None}


# --------------------------------------------------------------------------------------
# The graph code, on small synthetic packages
# --------------------------------------------------------------------------------------


def test_graph_holds_relative_function_level_and_submodule_imports(tmp_path):
  package = _write_package(tmp_path, {
      'pkg/__init__.py': '"""Nothing."""\n',
      'pkg/a.py': 'from . import b\nfrom .sub import helper, NAME\n',
      'pkg/b.py': 'def f():\n  import pkg.sub.helper\n',
      'pkg/sub/__init__.py': 'from ..b import f\nNAME = 1\n',
      'pkg/sub/helper.py': 'from pkg.sub import NAME\nimport os, json\n',
  })
  assert import_graph(package) == {
      'pkg': set(),
      'pkg.a': {'pkg.b', 'pkg.sub', 'pkg.sub.helper'},
      'pkg.b': {'pkg.sub.helper'},
      'pkg.sub': {'pkg.b'},
      'pkg.sub.helper': set(),  # its own package is left out
  }
  assert import_cycles(import_graph(package)) == []


def test_cycles_are_found_and_named_as_closed_paths(tmp_path):
  package = _write_package(tmp_path, {
      'pkg/__init__.py': '',
      'pkg/a.py': 'from pkg import b\n',
      'pkg/b.py': 'def f():\n  from . import c\n',
      'pkg/c.py': 'import pkg.a\n',
      'pkg/d.py': 'from pkg import e\n',
      'pkg/e.py': 'from .d import x\n',
      'pkg/leaf.py': 'from pkg import a, d\n',
  })
  assert import_cycles(import_graph(package)) == [['pkg.a', 'pkg.b', 'pkg.c', 'pkg.a'],
                                                  ['pkg.d', 'pkg.e', 'pkg.d']]


def test_entry_points_are_found_by_name_and_by_main_block(tmp_path):
  package = _write_package(tmp_path, {
      'pkg/__init__.py': '',
      'pkg/__main__.py': 'from pkg import lib\n',
      'pkg/run.py': "from pkg import lib, tool\n\nif __name__ == '__main__':\n  lib.go()\n",
      'pkg/tool.py': "if '__main__' == __name__:\n  pass\n",
      'pkg/lib.py': 'def go():\n  from pkg import tool\n',
  })
  assert entry_points(package) == {'pkg.__main__', 'pkg.run', 'pkg.tool'}
  assert entry_point_imports(package) == ['pkg.lib imports the entry point pkg.tool',
                                          'pkg.run imports the entry point pkg.tool']
