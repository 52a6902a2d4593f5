"""Inception weights: finding, checking, converting and downloading them.

The weights are pytorch-fid's port of TensorFlow's "inception-2015-12-05" graph,
`pt_inception-2015-12-05-6726825d.pth` (torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` holds the same tensors). Both `.pth` (read by
`safe_pth`, never executing pickled code) and `.npz` (the same names and PyTorch layouts,
loaded with `allow_pickle=False`) are accepted.

Following torch.hub, a file name ending in `-<hex>.pth` carries the start of the file's SHA-256;
when it does, the digest is verified.

Fetch the file once (needs network) with:

  python -m dcgan_jax.evaluation.download_weights

which prints the path of the cached copy (`$XDG_CACHE_HOME/dcgan_jax` or `~/.cache/dcgan_jax`).
"""
import hashlib
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Any

import numpy as np

from dcgan_jax import json_files
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation import inception
from dcgan_jax.evaluation import safe_pth

PYTORCH_FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                           'fid_weights/pt_inception-2015-12-05-6726825d.pth')
WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
# torch.hub convention: `<name>-<first hex digits of the SHA-256>.<ext>`.
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.(?:pth|pt|npz)$')
# PyTorch bookkeeping that inference does not need.
_IGNORED_SUFFIXES = ('num_batches_tracked',)


def default_cache_dir() -> pathlib.Path:
  """Where downloaded weights live: `$XDG_CACHE_HOME/dcgan_jax` or `~/.cache/dcgan_jax`."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'dcgan_jax'


def how_to_get_weights() -> str:
  """The instructions every missing-weights error gives (a sentence fragment)."""
  return (f'download {PYTORCH_FID_WEIGHTS_URL} (pytorch-fid\'s release) and pass its path, or run '
          f'`python -m dcgan_jax.evaluation.download_weights` once to fetch it into '
          f'{default_cache_dir()}')


def expected_sha256_prefix(path: str | os.PathLike) -> str | None:
  """The SHA-256 prefix a torch.hub-style file name carries (`...-6726825d.pth`), if any."""
  match = _HASH_IN_NAME.search(os.path.basename(os.fspath(path)))
  return match.group(1) if match else None


def sha256_of(path: str | os.PathLike) -> str:
  """The hex SHA-256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as file:
    for chunk in iter(lambda: file.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, prefix: str | None = None) -> None:
  """Checks a file's SHA-256 against `prefix` (default: the one its name carries).

  Raises:
    UserError: the digest does not start with the expected prefix.
  """
  prefix = prefix or expected_sha256_prefix(path)
  if prefix is None:
    return
  digest = sha256_of(path)
  if not digest.startswith(prefix.lower()):
    raise UserError(f'{path} has SHA-256 {digest[:16]}..., but its name says it should start '
                    f'with {prefix}: the file is corrupt or not the one it claims to be; '
                    f'{how_to_get_weights()}.')


def resolve_weights_path(path: str | os.PathLike | None) -> pathlib.Path:
  """Returns the weights file to use: `path`, or the cached download when `path` is empty.

  Raises:
    UserError: no file exists there, with instructions to get one.
  """
  candidate = pathlib.Path(path) if path else default_cache_dir() / WEIGHTS_FILENAME
  if path and candidate.is_dir():
    raise UserError(f'--inception_weights {candidate} is a folder; give the weights file, '
                    f'{WEIGHTS_FILENAME} (or an .npz copy); {how_to_get_weights()}.')
  if not candidate.is_file():
    where = f'at {candidate}' if path else f'(no --inception_weights given and none at {candidate})'
    raise UserError(f'Inception weights not found {where}; {how_to_get_weights()}.')
  return candidate


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the weights as {PyTorch name: array in PyTorch layout}, verifying a named hash.

  Args:
    path: a `.pth` (zip or legacy PyTorch format) or `.npz` file.

  Raises:
    UserError: missing, corrupt, hostile or mis-hashed file.
  """
  path = resolve_weights_path(path)
  verify_sha256(path)
  if path.suffix == '.npz' or (zipfile.is_zipfile(path) and _is_npz(path)):
    try:
      with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
      raise UserError(f'Cannot read {path} as an .npz of plain arrays: {e}') from None
  return safe_pth.read_pth(path)


def _is_npz(path: pathlib.Path) -> bool:
  with zipfile.ZipFile(path) as archive:
    return all(name.endswith('.npy') for name in archive.namelist())


def save_npz(state_dict: dict[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes a state dict as `.npz` (names and layouts unchanged), the pickle-free format."""
  np.savez(path, **state_dict)


def state_dict_to_variables(state_dict: dict[str, np.ndarray], source: str = 'the weights'
                           ) -> dict[str, Any]:
  """Maps PyTorch names onto the Flax variables, checking every name and shape.

  `X.conv.weight` [O, I, H, W] -> params X/conv/kernel [H, W, I, O]; `X.bn.weight|bias` ->
  params X/bn/scale|bias; `X.bn.running_mean|var` -> batch_stats X/bn/mean|var; `fc.weight`
  [1008, 2048] -> params fc/kernel [2048, 1008]; `fc.bias` -> params fc/bias.

  Args:
    state_dict: {PyTorch name: array}.
    source: how to name the weights in error messages (usually the path).

  Returns:
    {'params': ..., 'batch_stats': ...} as nested dicts of float32 numpy arrays.

  Raises:
    UserError: a name is missing or unexpected, or a shape differs from the model's.
  """
  expected = _flatten(inception.variable_shapes())
  variables = {}
  unexpected = []
  for name, array in state_dict.items():
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    target = _flax_path(name)
    if target is None or target not in expected:
      unexpected.append(name)
      continue
    array = np.asarray(array)
    if array.ndim == 4:
      array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    elif target[-2:] == ('fc', 'kernel'):
      array = array.T
    if array.shape != expected[target].shape:
      raise UserError(f'{source}: {name} has shape {_torch_shape(array.shape, target)}, but the '
                      f'FID Inception needs {_torch_shape(expected[target].shape, target)}; '
                      f'these are not the 2015-12-05 FID Inception weights.')
    variables[target] = array.astype(np.float32)
  if unexpected:
    raise UserError(f'{source} holds {len(unexpected)} tensors the FID Inception does not have '
                    f'(e.g. {", ".join(unexpected[:3])}); use {WEIGHTS_FILENAME}.')
  missing = [_torch_name(p) for p in expected if p not in variables]
  if missing:
    raise UserError(f'{source} lacks {len(missing)} of the FID Inception\'s tensors '
                    f'(e.g. {", ".join(missing[:3])}); use {WEIGHTS_FILENAME}.')
  return _unflatten(variables)


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
  """{PyTorch name: PyTorch shape} of every tensor a weights file must hold (472 of them)."""
  return {_torch_name(path): _torch_shape(shape.shape, path)
          for path, shape in _flatten(inception.variable_shapes()).items()}


def load_inception_variables(path: str | os.PathLike | None) -> dict[str, Any]:
  """Reads, checks and converts a weights file into Flax variables.

  Args:
    path: `.pth` or `.npz` weights; empty or None means the cached download.

  Returns:
    {'params', 'batch_stats'} for `inception.FIDInceptionV3` (see `state_dict_to_variables`).

  Raises:
    UserError: missing (with instructions), corrupt, hostile, mis-hashed or mis-shaped weights.
  """
  path = resolve_weights_path(path)
  return state_dict_to_variables(read_state_dict(path), source=str(path))


def download_inception_weights(url: str = PYTORCH_FID_WEIGHTS_URL,
                               cache_dir: str | os.PathLike | None = None,
                               sha256_prefix: str | None = None) -> pathlib.Path:
  """Downloads the weights once into a cache directory, verifying the checksum.

  Args:
    url: where to fetch from (any scheme urllib knows, `file://` included).
    cache_dir: target directory; default `default_cache_dir()`.
    sha256_prefix: expected start of the SHA-256; default: the one the URL's file name carries.

  Returns:
    The path of the verified file in the cache (reused without downloading when present).

  Raises:
    UserError: the download failed or the checksum does not match (nothing is kept).
  """
  cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  filename = os.path.basename(urllib.request.url2pathname(url.rsplit('/', 1)[-1]))
  prefix = sha256_prefix or expected_sha256_prefix(filename)
  target = cache_dir / filename
  if target.is_file():
    verify_sha256(target, prefix)
    return target
  cache_dir.mkdir(parents=True, exist_ok=True)
  # Download next to the target and rename only after verification, so an interrupted or
  # corrupt download never looks like a cached file.
  handle, partial = tempfile.mkstemp(dir=cache_dir, prefix=filename, suffix='.partial')
  try:
    with os.fdopen(handle, 'wb') as out, urllib.request.urlopen(url) as response:
      for chunk in iter(lambda: response.read(1 << 20), b''):
        out.write(chunk)
    if prefix is not None and not sha256_of(partial).startswith(prefix.lower()):
      raise UserError(f'The file downloaded from {url} does not have the expected SHA-256 prefix '
                      f'{prefix}; nothing was kept, try again or download it by hand.')
    json_files.give_new_file_permissions(partial)
    os.replace(partial, target)
  except (urllib.error.URLError, OSError) as e:
    raise UserError(f'Downloading {url} failed ({e}); download it by hand and pass its path.'
                    ) from None
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


def _flax_path(torch_name: str) -> tuple[str, ...] | None:
  *module, leaf = torch_name.split('.')
  if module == ['fc']:
    return {'weight': ('params', 'fc', 'kernel'), 'bias': ('params', 'fc', 'bias')}.get(leaf)
  if len(module) < 2:
    return None
  *block, layer = module
  table = {
      ('conv', 'weight'): ('params', 'kernel'),
      ('bn', 'weight'): ('params', 'scale'),
      ('bn', 'bias'): ('params', 'bias'),
      ('bn', 'running_mean'): ('batch_stats', 'mean'),
      ('bn', 'running_var'): ('batch_stats', 'var'),
  }
  if (layer, leaf) not in table:
    return None
  collection, flax_leaf = table[(layer, leaf)]
  return (collection, *block, layer, flax_leaf)


def _torch_name(path: tuple[str, ...]) -> str:
  collection, *module, leaf = path
  if module == ['fc']:
    return {'kernel': 'fc.weight', 'bias': 'fc.bias'}[leaf]
  torch_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                'var': 'running_var'}[leaf]
  del collection
  return '.'.join([*module, torch_leaf])


def _torch_shape(shape: tuple[int, ...], path: tuple[str, ...]) -> tuple[int, ...]:
  """A Flax variable's shape as PyTorch prints it, so messages match what users see in torch."""
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW.
  if path[-2:] == ('fc', 'kernel'):
    return shape[::-1]
  return shape


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
  tree = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree
