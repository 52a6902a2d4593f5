"""Writing the JSON results a run and its tools leave in the workdir."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_json_atomically(path: str | os.PathLike, value: Any) -> pathlib.Path:
  """Writes ``value`` as indented, key-sorted JSON with a final newline, through a temporary
  file and a rename, so that readers see the old file or the complete new one.

  Returns:
    ``path`` as a :class:`pathlib.Path`.
  """
  path = pathlib.Path(path)
  tmp_path = path.with_name(path.name + '.tmp')
  tmp_path.write_text(json.dumps(value, indent=2, sort_keys=True) + '\n', encoding='utf-8')
  os.replace(tmp_path, path)
  return path
