"""Writing the files a run and its tools leave in the workdir: JSON results, and the permissions
of files written through a temporary file."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

from dcgan_jax import write_errors

# The process's umask, read once at import (reading it means setting it, which is not safe
# while other threads create files).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def give_new_file_permissions(path: str | os.PathLike) -> None:
  """Gives a file made by ``tempfile`` (always 0600) the permissions of any new file (0666
  less the umask: usually 0644), so that renamed into place it is readable as the other outputs
  are (by colleagues, a web server) rather than by its owner alone."""
  os.chmod(path, 0o666 & ~_UMASK)


def write_json_atomically(path: str | os.PathLike, value: Any) -> pathlib.Path:
  """Writes ``value`` as indented, key-sorted JSON with a final newline, through a temporary
  file and a rename, so that readers see the old file or the complete new one.

  Returns:
    ``path`` as a :class:`pathlib.Path`.
  """
  path = pathlib.Path(path)
  tmp_path = path.with_name(path.name + '.tmp')
  text = json.dumps(value, indent=2, sort_keys=True) + '\n'
  try:
    with write_errors.naming(path):  # A failed write or close names no file.
      tmp_path.write_text(text, encoding='utf-8')
    os.replace(tmp_path, path)
  except BaseException:
    # (A full disk left a cut-short '.tmp' beside the file, which stays as it was.)
    with contextlib.suppress(OSError):
      os.remove(tmp_path)
    raise
  return path
