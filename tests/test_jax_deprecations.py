"""The library (and its tests, experiments, configs) name no JAX API the installed jax deprecates.

jax deprecates a public name by moving it into its module's ``_deprecations`` table: the first
access warns once per process (whoever makes it: orbax often does, at import, so a warnings
filter would not see ours), and a later release removes the name. Reading the tables finds
each use at once on whichever jax is installed, without running the code that makes it.
"""
import ast
import importlib
import pathlib

import jax

REPOSITORY = pathlib.Path(__file__).parents[1]
FOLDERS = ('dcgan_jax', 'experiments', 'configs', 'tests')


def _jax_names(tree):
  """Yields (dotted jax name, line) for each `jax.a.b` attribute chain and `from jax.a import b`."""
  aliases = {}  # Local name -> the jax module it stands for (`import jax.numpy as jnp`).
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name == 'jax' or alias.name.startswith('jax.'):
          aliases[alias.asname or 'jax'] = alias.name if alias.asname else 'jax'
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
        node.module == 'jax' or node.module.startswith('jax.')):
      for alias in node.names:
        yield f'{node.module}.{alias.name}', node.lineno
        aliases[alias.asname or alias.name] = f'{node.module}.{alias.name}'
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      parts = []
      while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
      if isinstance(node, ast.Name) and node.id in aliases:
        yield '.'.join([aliases[node.id], *reversed(parts)]), node.lineno


def _deprecated_prefix(dotted):
  """The part of `dotted` that its jax module lists as deprecated, or None."""
  parts = dotted.split('.')
  for i in range(1, len(parts)):
    try:
      module = importlib.import_module('.'.join(parts[:i]))
    except ImportError:
      return None
    if parts[i] in getattr(module, '_deprecations', {}):
      return '.'.join(parts[:i + 1])
  return None


def test_no_code_here_uses_a_deprecated_jax_name():
  found = []
  for path in sorted(p for folder in FOLDERS for p in (REPOSITORY / folder).rglob('*.py')):
    for dotted, line in _jax_names(ast.parse(path.read_text(encoding='utf-8'))):
      if (name := _deprecated_prefix(dotted)) is not None:
        found.append(f'{path.relative_to(REPOSITORY)}:{line}: {name}')
  assert not found, f'jax {jax.__version__} deprecates: ' + '; '.join(sorted(set(found)))


def test_the_scan_finds_a_deprecated_name_however_it_is_reached():
  """The scan itself works (on any jax that deprecates something in these modules)."""
  tables = [name for name in ('jax', 'jax.sharding', 'jax.core', 'jax.numpy', 'jax.lax')
            if getattr(importlib.import_module(name), '_deprecations', {})]
  if not tables:
    return  # Nothing deprecated to look for.
  module = tables[0]
  table = importlib.import_module(module)._deprecations  # pylint: disable=protected-access
  deprecated = next(iter(table))
  expected = f'{module}.{deprecated}'
  for source in (f'import jax\nx = {expected}.y\n',
                 f'import {module} as alias\nx = alias.{deprecated}\n',
                 f'from {module} import {deprecated}\n'):
    names = [_deprecated_prefix(dotted) for dotted, _ in _jax_names(ast.parse(source))]
    assert expected in names, source
