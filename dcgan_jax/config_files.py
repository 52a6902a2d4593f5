"""Loading a config file (``configs/*.py``) by path: for notebooks, tests and other configs.

Light on purpose (importlib and ml_collections only): the configs in ``configs/`` import it to
build on ``default.py`` from any working directory. ``dcgan_jax.train.load_config`` is the same
function.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
from typing import Any

import ml_collections

from dcgan_jax.errors import UserError


def load_config(path: str | os.PathLike, **overrides: Any) -> ml_collections.ConfigDict:
  """Loads a config file (``configs/*.py``) as the CLI's ``--config=`` does.

  Args:
    path: A Python file defining ``get_config()``.
    **overrides: Fields to change, as ``--config.<field>=<value>`` would, e.g.
      ``load_config('configs/default.py', num_train_steps=200)``.

  Returns:
    The config, with the overrides applied, locked: its fields can be changed, but assigning
    one it does not have (a misspelling) raises AttributeError; add new fields inside
    ``with config.unlocked():``.

  Raises:
    UserError: a missing or broken file, or an override that names no field or has the wrong
      type.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f'No config file at {path!r}; pass e.g. configs/default.py (relative to the '
                    f'working directory {os.getcwd()!r}).')
  spec = importlib.util.spec_from_file_location(
      '_dcgan_jax_config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # Any error in the user's file.
    raise UserError(f'Cannot load the config file {path!r} ({type(e).__name__}: {e}); it must '
                    'define get_config() returning an ml_collections.ConfigDict.') from e
  for name, value in overrides.items():
    if name not in config:
      raise UserError(f'Unknown config field {name!r}; the valid fields are listed in '
                      'configs/default.py.')
    try:
      config[name] = value
    except (TypeError, ValueError) as e:  # ml_collections refuses a type change.
      raise UserError(f'config.{name} cannot be set to {value!r}: {e}') from e
  # Locked, as the CLI's --config is: a misspelt field set later (config.num_train_step = 10)
  # raises instead of being carried along unread. Fields of one's own can still be added
  # inside `with config.unlocked():`.
  config.lock()
  return config


# configs/default.py beside the package (a clone or an editable install): it defines every
# field the library reads.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'default.py')


def default_config(beside: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
  """configs/default.py, the config the other configs build on, loaded from any directory.

  Args:
    beside: A config file (its ``__file__``): the ``default.py`` next to it is used when there
      is one, so that a copy of the configs folder keeps its own defaults; otherwise, as for a
      single config copied elsewhere to start a sweep, :data:`DEFAULT_CONFIG`.

  Raises:
    UserError: neither file exists (a plain pip install has no configs folder).
  """
  candidates = []
  if beside is not None:
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(beside)), 'default.py'))
  candidates.append(DEFAULT_CONFIG)
  for path in candidates:
    if os.path.isfile(path):
      return load_config(path)
  raise UserError(f'This config builds on configs/default.py, which is in none of '
                  f'{", ".join(candidates)}; copy default.py beside it, or build on a clone of '
                  'the repository.')


def default_values() -> dict[str, Any]:
  """configs/default.py's fields and values as a dict; empty where it is not beside the package
  (a plain pip install) or cannot load."""
  if not os.path.isfile(DEFAULT_CONFIG):
    return {}
  try:
    return load_config(DEFAULT_CONFIG).to_dict()
  except UserError:
    return {}


# What state-shaping fields added after the first release meant before they existed (older
# config.json files and checkpoints).
BEFORE_THEY_EXISTED = {'discriminator_norm': 'batch', 'num_classes': 0,
                       'generator_conditioning': 'concat'}

# A training run's config and its checkpoints' folder, in its workdir (checkpointing's names).
RUN_CONFIG_FILE = 'config.json'
RUN_CHECKPOINT_DIR = 'checkpoints'


def run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a training run was last started with, to resume it without its config file.

  ``python -m dcgan_jax.main --workdir=RUN`` (no ``--config``) trains on with it. It is
  ``<workdir>/config.json``, which every start of the run writes, overrides included (else,
  where that file is gone, the newest checkpoint's config). Fields that configs/default.py
  defines and the saved config lacks (added to dcgan_jax since the run started) take their
  default values, as they would with ``--config=configs/default.py``; the resume names them.

  Args:
    workdir: A training run's directory.

  Returns:
    The config, locked as :func:`load_config`'s.

  Raises:
    UserError: the workdir holds no run, or its config.json cannot be read.
  """
  path = os.path.join(os.path.expanduser(os.fspath(workdir)), RUN_CONFIG_FILE)
  if os.path.isfile(path):
    try:
      with open(path, encoding='utf-8') as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise UserError(f'{path} cannot be read ({type(e).__name__}: {e}); pass the config file '
                      'and the overrides the run was started with, --config=... .') from e
    if not isinstance(saved, dict):
      raise UserError(f'{path} does not hold a JSON object; pass the config file and the '
                      'overrides the run was started with, --config=... .')
  else:
    from dcgan_jax import checkpointing  # pylint: disable=g-import-not-at-top  # orbax: slow.
    saved = checkpointing.restore_config(workdir)
  config = ml_collections.ConfigDict({**default_values(), **BEFORE_THEY_EXISTED, **saved})
  config.lock()
  return config


def holds_a_run(workdir: str | os.PathLike) -> bool:
  """Whether `workdir` holds a training run's config.json or a checkpoint's step folder (cheap:
  no orbax)."""
  path = os.path.expanduser(os.fspath(workdir))
  if os.path.isfile(os.path.join(path, RUN_CONFIG_FILE)):
    return True
  try:
    return any(name.isdigit() for name in os.listdir(os.path.join(path, RUN_CHECKPOINT_DIR)))
  except OSError:  # No such folder (or not one).
    return False


def default_field_names() -> list[str]:
  """The fields configs/default.py defines, sorted (empty as :func:`default_values`)."""
  return sorted(default_values())


def unknown_fields(config: ml_collections.ConfigDict) -> list[tuple[str, list[str]]]:
  """The config's fields that configs/default.py does not define, each with close matches.

  A config built without :func:`load_config` (``default.get_config()`` imported directly) is
  not locked, so a misspelt field set in it (``config.generator_widht = 32``) is carried along
  unread. Empty where configs/default.py is not beside the package (a plain pip install).
  """
  known = default_field_names()
  if not known:
    return []
  return [(name, difflib.get_close_matches(name, known, n=2, cutoff=0.75))
          for name in config.keys() if name not in known]

