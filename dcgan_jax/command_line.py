"""Flag parsing shared by the command-line programs (``sample``, ``profiling``, ``evaluate``,
``fid``)."""
from __future__ import annotations

import difflib
import os
import re
import signal
import sys
from typing import Any

from dcgan_jax.errors import exit_with_user_error, first_line


HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull')
# Flags that name files or folders. A shell expands '~' only at the start of a word, not after
# '--flag=', so the programs expand it themselves (as they always did for --workdir and PATHs).
PATH_FLAGS = ('workdir', 'inception_weights', 'save_stats', 'reference', 'out', 'out_dir',
              'gif_out', 'dataset_path', 'hlo', 'json_out')


def expand_user_paths(flag_values: Any) -> None:
  """Expands a leading ``~`` in the values of :data:`PATH_FLAGS` that ``flag_values`` has."""
  for name in PATH_FLAGS:
    if name in flag_values:
      value = flag_values[name].value
      if isinstance(value, str) and value.startswith('~'):
        flag_values[name].value = os.path.expanduser(value)


def exit_with_help_if_asked(flag_values: Any, argv: list[str], usage: str | None) -> None:
  """With ``--help`` (or ``-h``, ...) in ``argv``: prints ``usage`` and the flags, exits 0."""
  if not any(arg in HELP_FLAGS for arg in argv[1:]):
    return
  text = flag_values.get_help(include_special_flags=False).strip()
  try:
    print(((usage or '').strip() + '\n\nFlags:\n' + text).strip())
    sys.stdout.flush()
  except BrokenPipeError:  # `--help | head`: the reader left, which is fine.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flushes.
  sys.exit(0)


def exit_interrupted(note: str = '') -> None:
  """Ends a program stopped by Ctrl-C: one line on stderr (``Interrupted.`` and ``note``),
  exit status 130 as a shell reports SIGINT.

  Without the interpreter's clean-up: interrupted inside JAX (compiling, or waiting for the
  device), the clean-up printed a traceback of some fifty frames and at times died of a
  segmentation fault (exit -11). Call it only where every file the program writes is whole:
  written through a temporary file and a rename, or not at all.
  """
  signal.signal(signal.SIGINT, signal.SIG_DFL)  # A further Ctrl-C ends the process at once.
  try:
    sys.stdout.flush()
  except (OSError, ValueError):
    pass
  try:
    sys.stderr.write(f"Interrupted.{' ' + note if note else ''}\n")
    sys.stderr.flush()
  except (OSError, ValueError):
    pass
  os._exit(128 + signal.SIGINT)  # pylint: disable=protected-access


def run_app(main: Any, flags_parser: Any, interrupted_note: str = '') -> None:
  """``absl.app.run(main, flags_parser)``, with Ctrl-C ending as :func:`exit_interrupted`."""
  from absl import app  # pylint: disable=g-import-not-at-top

  try:
    app.run(main, flags_parser=flags_parser)
  except KeyboardInterrupt:
    exit_interrupted(interrupted_note)


def config_arg(argv: list[str]) -> str | None:
  """The value of the last --config flag (absl keeps the last), or None."""
  path = None
  for i, arg in enumerate(argv):
    if arg == '--':  # absl stops parsing flags here.
      break
    if arg.startswith(('--config=', '-config=')):  # absl takes one dash too.
      path = arg.split('=', 1)[1]
    elif arg in ('--config', '-config') and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _config_fields(argv: list[str], path: str | None) -> list[str]:
  """The field names beside the unknown one (``path``'s parent), from the config file of
  ``argv``; empty where it cannot be read."""
  config_path = config_arg(argv)
  if not config_path:
    return []
  from dcgan_jax import config_files  # pylint: disable=g-import-not-at-top
  try:
    node = config_files.load_config(config_path)
    for part in (path or '').split('.')[:-1]:
      node = node[part]
    return sorted(node.keys())
  except Exception:  # pylint: disable=broad-except  # Then ml_collections' guess alone.
    return []


def unknown_config_field_message(error: Exception, argv: list[str]) -> str:
  """'Unknown config field ...' naming the offending --config.<field>, or the config file that
  set it, and close matches."""
  text = error
  while isinstance(text, BaseException) and text.args:  # AttributeError(KeyError("'name'..."))
    text = text.args[0]
  # A locked config's own text names the field first ('Key "x" does not exist ...'), then lists
  # every other field, quoted too; a plain lookup's is just the quoted name.
  match = (re.search(r'Key "([^"]+)" does not exist', str(text))
           or re.search(r"'([^']+)'", str(text)))
  name = match.group(1) if match else str(text).strip('\'" ')
  overrides = [arg[len('--config.'):].split('=', 1)[0] for arg in argv
               if arg.startswith('--config.')]
  path = next((p for p in overrides if name in p.split('.')), None)
  # Close matches among the config file's fields, since ml_collections' own guess names only
  # one ('learning_rate' is close to both g_learning_rate and d_learning_rate).
  close = difflib.get_close_matches(name.split('.')[-1], _config_fields(argv, path), n=2,
                                    cutoff=0.75)
  suggestion = re.search(r'Did you mean "([^"]+)"', str(text))  # ml_collections' guess.
  if suggestion and suggestion.group(1) not in close:
    close = [suggestion.group(1)] + close[:1]
  hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ''
  if path is None:  # Set by the config file itself, not by an override.
    config_file = config_arg(argv) or 'the config file'
    return (f'Unknown config field {name!r}, set in {config_file}; {hint}the valid fields are '
            'listed in configs/default.py.')
  return (f'Unknown config field {path!r} (--config.{path}); {hint}the valid fields are listed '
          'in configs/default.py.')


def nested_override_message(argv: list[str], config_path: str | None) -> str | None:
  """The message for ``--config.<field>.<sub>=...`` where ``<field>`` holds a plain value, or
  None when no override does that (ml_collections fails with an unrelated TypeError, such as
  "string indices must be integers", which read as a broken config file)."""
  if not config_path:
    return None
  from dcgan_jax import config_files  # pylint: disable=g-import-not-at-top
  try:
    config = config_files.load_config(config_path)
  except Exception:  # pylint: disable=broad-except  # The file itself is broken: not this case.
    return None
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    parts = path.split('.')
    node = config
    for depth, part in enumerate(parts[:-1]):
      if not hasattr(node, 'keys') or part not in node:
        break
      node = node[part]
      if not hasattr(node, 'keys'):
        field = '.'.join(parts[:depth + 1])
        return (f'--config.{path}: {field!r} is a single value ({type(node).__name__} '
                f'{node!r}), not a group of fields; pass --config.{field}=<value>.')
  return None


_TYPE_WORDS = {bool: 'true or false', int: 'a whole number', float: 'a number',
               str: 'text'}


def config_value_message(error: Exception, config_path: str | None) -> str | None:
  """The message for ``--config.<field>=<value>`` whose value does not parse as the field's
  type, or None for any other flag error.

  ml_collections' own text (``invalid literal for int() with base 10: 'abc'``,
  ``('Non-boolean argument to boolean flag', 'maybe')``) says neither what the field takes nor
  what the config file sets; this one names both.
  """
  match = re.match(r'flag --config\.([\w.]+)=(.*?): ', first_line(error))
  if not match or not config_path:
    return None
  from dcgan_jax import config_files  # pylint: disable=g-import-not-at-top
  try:
    node = config_files.load_config(config_path)
    for part in match.group(1).split('.'):
      node = node[part]
  except Exception:  # pylint: disable=broad-except  # Not a plain field of a loadable file.
    return None
  if type(node) not in _TYPE_WORDS:
    return None
  path, value = match.groups()
  return (f'--config.{path}={value}: {path} takes {_TYPE_WORDS[type(node)]} (the config file '
          f'sets {node!r}); {value!r} is not one.')


def parse_workdir_flags(flag_values: Any, argv: list[str] | None, usage: str | None = None) -> Any:
  """Parses ``argv`` (default ``sys.argv``) into absl ``flag_values``, which define ``workdir``.

  ``--help`` prints ``usage`` (the program's docstring) and the flags. A flag error, a stray
  positional argument or a missing ``--workdir`` prints one line and exits with status 2.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  argv = list(sys.argv if argv is None else argv)
  exit_with_help_if_asked(flag_values, argv, usage)
  try:
    remaining = flag_values(argv)
  except flags.UnrecognizedFlagError as e:
    exit_with_user_error(unknown_flag_message(e.flagname, list(flag_values),
                                              boolean_flags(flag_values)))
  except flags.Error as e:
    exit_with_user_error(first_line(e))
  if len(remaining) > 1:
    exit_with_user_error(f'Unexpected arguments {" ".join(remaining[1:])!r}; pass options as '
                         '--name=value.')
  expand_user_paths(flag_values)
  if not flag_values.workdir:
    exit_with_user_error('--workdir is required, e.g. --workdir=/tmp/dcgan_digits.')
  return flag_values


def parse_private_flags(flag_values: Any, argv: list[str], usage: str | None = None) -> list[str]:
  """Parses a program's private absl ``flag_values``, then absl's own (--verbosity, ...).

  The flag set is reset first, so tests can parse more than once in one process. ``--help``
  prints ``usage`` (the program's docstring) and these flags, and exits 0 (absl's own help
  knows only its global flags). A flag error prints one line and exits with status 2.

  Returns:
    What absl leaves: the program name and the positional arguments.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  exit_with_help_if_asked(flag_values, argv, usage)
  flag_values.unparse_flags()
  try:
    remaining = flag_values(argv, known_only=True)
    expand_user_paths(flag_values)
    return flags.FLAGS(remaining)
  except flags.UnrecognizedFlagError as e:
    exit_with_user_error(unknown_flag_message(e.flagname, list(flag_values),
                                              boolean_flags(flag_values)))
  except flags.Error as e:
    exit_with_user_error(first_line(e))


def boolean_flags(flag_values: Any) -> list[str]:
  return [name for name in flag_values if getattr(flag_values[name], 'boolean', False)]


def unknown_flag_message(name: str, known: list[str], booleans: Any = ()) -> str:
  """'Unknown flag --name', with this program's spelling or the closest of its flags.

  Args:
    name: The flag as given.
    known: The program's flags.
    booleans: Those of them that are booleans, which absl turns off as ``--no<name>``
      (``--no_ema`` for the flag ``ema`` is told ``--noema``).
  """
  bare = name.lstrip('-').split('=', 1)[0]
  underscored = bare.replace('-', '_')
  if underscored != bare and underscored in known:
    return f'Unknown flag --{bare}; this program spells it --{underscored}.'
  if underscored.startswith('no_') and underscored[3:] in booleans:
    return f'Unknown flag --{bare}; this program spells it --no{underscored[3:]}.'
  close = difflib.get_close_matches(underscored, known, n=1, cutoff=0.7)
  hint = f'did you mean --{close[0]}? ' if close else ''
  return f'Unknown flag --{bare}; {hint}--help lists the flags.'
