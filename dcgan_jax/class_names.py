"""The names of a class-conditional run's classes, kept in ``<workdir>/classes.json``.

Labels are class numbers everywhere in training; the names say which number is which (a
folder's class folders are numbered in sorted order, tfds datasets carry their own names). The
training program saves them at the start of a run whose dataset names its classes, so that
``sample --label=cat`` and ``evaluate --label=cat`` can take a name as well as a number.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from dcgan_jax import json_files
from dcgan_jax.errors import UserError

CLASSES_FILE = 'classes.json'


def has_names(names: Sequence[str]) -> bool:
  """Whether ``names`` say more than the class numbers (tfds' digits are named '0'..'9')."""
  return any(name != str(i) for i, name in enumerate(names))


def save(workdir: str | os.PathLike, names: Sequence[str]) -> None:
  """Writes ``names`` (in label order) to the workdir's classes file, atomically."""
  json_files.write_json_atomically(os.path.join(workdir, CLASSES_FILE),
                                   {'class_names': [str(name) for name in names]})


def _read(workdir: str | os.PathLike) -> tuple[str, ...] | None:
  """The names in the classes file; () when there is none, None when it is unreadable."""
  try:
    with open(os.path.join(workdir, CLASSES_FILE), encoding='utf-8') as f:
      names = json.load(f)['class_names']
  except FileNotFoundError:
    return ()
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    return None
  return tuple(names)


def load(workdir: str | os.PathLike) -> tuple[str, ...]:
  """The run's class names in label order; () when it saved none (or the file is unreadable:
  the names are a convenience, and class numbers still work)."""
  return _read(workdir) or ()


def parse_label(text: str | None, workdir: str | os.PathLike) -> int | None:
  """A ``--label`` flag's class: None for empty, the number of the class with that name in the
  run's classes file, or a class number as written. A name wins over a number: with class
  folders ``1``, ``10``, ``2`` (labels 0, 1, 2 in sorted order), ``--label=1`` is folder ``1``.

  The range of a number is checked against the run's ``num_classes`` later
  (:func:`dcgan_jax.models.check_label`).

  Raises:
    UserError: a name that is not one of the run's classes, or a name for a run that saved none.
  """
  if text is None or not str(text).strip():
    return None
  text = str(text).strip()
  names = load(workdir)
  if text in names:
    return names.index(text)
  try:
    return int(text)
  except ValueError:
    pass
  folded = [i for i, name in enumerate(names) if name.casefold() == text.casefold()]
  if len(folded) == 1:
    return folded[0]
  if not names and _read(workdir) is None:  # Damaged: say so, not that the run saved none.
    raise UserError(f'--label={text}: {os.path.join(workdir, CLASSES_FILE)} is unreadable (not '
                    'a JSON object with a "class_names" list of strings), so names cannot be '
                    'looked up; pass a class number.')
  if not names:
    raise UserError(f'--label={text}: this run saved no class names (no {CLASSES_FILE} in '
                    f'{workdir}); pass a class number.')
  shown = ', '.join(f'{i} {name}' for i, name in enumerate(names[:20]))
  more = ', ...' if len(names) > 20 else ''
  raise UserError(f'--label={text} is not a class of this run; pass a number or a name '
                  f'({shown}{more}).')
