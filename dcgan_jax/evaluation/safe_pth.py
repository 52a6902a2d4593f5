"""Reads PyTorch `.pth` state dicts without torch and without executing pickled code.

A `.pth` file holds a pickle, and unpickling runs whatever callables the pickle names, so a
plain `pickle.load` (or `torch.load` without `weights_only`) of a hostile file runs arbitrary
code. This reader overrides `find_class` so the pickle can reach only what a state dict needs:

* `collections.OrderedDict` (the state dict itself and the tensors' empty hook dicts);
* `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, replaced by our own functions
  that build numpy arrays (nothing from torch is imported or called);
* the typed storage classes `torch.FloatStorage`, `torch.LongStorage`, ..., replaced by inert
  markers that only name a dtype.

Everything else (`os.system`, `builtins.eval`, `torch.storage._load_from_bytes`, ...) is refused
before it can be called. Storage bytes come from the archive through `persistent_load`, and every
tensor view is bounds-checked against its storage.

Both serialisations torch writes are supported: the zip archive (torch >= 1.6: `<name>/data.pkl`
plus one `<name>/data/<key>` record per storage) and the legacy stream (magic number, protocol,
system info, the pickle, storage keys, then raw storages).
"""
import collections
import io
import os
import pickle
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from dcgan_jax.errors import UserError

# torch's typed storage classes and the numpy dtype each one holds.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL_VERSION = 1001


class _StorageType:
  """Inert stand-in for a torch storage class: it only names the element dtype."""
  __slots__ = ('name',)

  def __init__(self, name: str):
    self.name = name

  def __call__(self, *args, **kwargs):
    # A real storage class is constructible; a pickle has no business constructing one.
    raise pickle.UnpicklingError(f'the pickle tried to call torch.{self.name}')


class _LegacyStorage:
  """A storage of a legacy file, whose bytes come only after the pickle."""

  def __init__(self, key: str):
    self.key = key


class _DeferredTensor:
  """A tensor of a legacy file, rebuilt once its storage's bytes have been read."""

  def __init__(self, storage, args):
    if not isinstance(storage, _LegacyStorage):
      raise pickle.UnpicklingError('a tensor refers to something that is not a storage')
    self.key = storage.key
    self.args = args


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Our replacement of torch._utils._rebuild_tensor_v2: a bounds-checked numpy copy."""
  del requires_grad, backward_hooks, metadata  # Irrelevant for inference weights.
  if not isinstance(storage, np.ndarray):
    raise pickle.UnpicklingError('a tensor refers to something that is not a storage')
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  storage_offset = int(storage_offset)
  if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
    raise pickle.UnpicklingError(f'invalid tensor geometry size={size} stride={stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    # as_strided would read past the buffer: refuse rather than leak memory.
    raise pickle.UnpicklingError('a tensor reaches past the end of its storage')
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)  # A contiguous, owned copy.


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  if not isinstance(data, (np.ndarray, _DeferredTensor)):
    raise pickle.UnpicklingError('a parameter wraps something that is not a tensor')
  return data


def _allowed_globals(rebuild_tensor) -> dict[tuple[str, str], Any]:
  """The only globals a state dict may name, as new objects for every load.

  Fresh objects, because a pickle's BUILD opcode can set attributes on whatever it was handed:
  it must not be able to alter anything that outlives the load.
  """
  return {
      ('collections', 'OrderedDict'): collections.OrderedDict,  # Immutable built-in type.
      ('torch._utils', '_rebuild_tensor_v2'): lambda *args: rebuild_tensor(*args),
      ('torch._utils', '_rebuild_parameter'): lambda *args: _rebuild_parameter(*args),
      **{('torch', name): _StorageType(name) for name in _STORAGE_DTYPES},
  }


class _RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only the globals of `_allowed_globals`."""

  def __init__(self, file: BinaryIO, load_storage, rebuild_tensor=_rebuild_tensor_v2):
    super().__init__(file)
    self._load_storage = load_storage
    self._globals = _allowed_globals(rebuild_tensor)

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._globals[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refusing to load global {module}.{name}: a weights file needs only tensors') from None

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and pid and pid[0] in ('storage', b'storage')):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r:.80}')
    return self._load_storage(pid[1:])


def _storage_dtype(storage_type: Any) -> np.dtype:
  if not isinstance(storage_type, _StorageType) or storage_type.name not in _STORAGE_DTYPES:
    raise pickle.UnpicklingError('a storage record does not name a storage type')
  return np.dtype(_STORAGE_DTYPES[storage_type.name])


def _read_zip(path: str) -> Any:
  """Loads the zip serialisation: `<name>/data.pkl` and `<name>/data/<key>` records."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
    if len(pickles) != 1:
      raise pickle.UnpicklingError('the archive does not hold exactly one data.pkl')
    prefix = pickles[0][:-len('data.pkl')]
    if prefix + 'byteorder' in archive.namelist():
      if archive.read(prefix + 'byteorder') != b'little':
        raise pickle.UnpicklingError('big-endian tensors are not supported')
    storages = {}

    def load_storage(record):
      storage_type, key, _location, numel = record[:4]
      dtype = _storage_dtype(storage_type)
      key = key.decode() if isinstance(key, bytes) else str(key)
      if key not in storages:
        raw = archive.read(f'{prefix}data/{key}')
        if len(raw) < int(numel) * dtype.itemsize:
          raise pickle.UnpicklingError(f'storage {key} is shorter than its {numel} elements')
        storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel))
      return storages[key]

    return _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _read_legacy(file: BinaryIO) -> Any:
  """Loads the pre-1.6 stream: header pickles, the state-dict pickle, then raw storages."""
  def no_storages(record):
    raise pickle.UnpicklingError('a header refers to a storage')

  header = lambda: _RestrictedUnpickler(file, no_storages).load()
  if header() != _LEGACY_MAGIC_NUMBER:
    raise pickle.UnpicklingError('not a PyTorch file (wrong magic number)')
  if header() != _LEGACY_PROTOCOL_VERSION:
    raise pickle.UnpicklingError('unsupported legacy protocol version')
  sys_info = header()
  if not isinstance(sys_info, dict) or not sys_info.get('little_endian', False):
    raise pickle.UnpicklingError('big-endian tensors are not supported')

  # The pickle comes before the storages' bytes, so it gets empty arrays that are filled below
  # (views into them are rebuilt lazily, after the bytes are in place).
  pending = {}  # key -> (dtype, numel)
  deferred = []

  def load_storage(record):
    storage_type, key, _location, numel, view_metadata = record
    if view_metadata is not None:
      raise pickle.UnpicklingError('storage views are not supported')
    key = key.decode() if isinstance(key, bytes) else str(key)
    pending.setdefault(key, (_storage_dtype(storage_type), int(numel)))
    return _LegacyStorage(key)

  def rebuild(storage, *args):
    deferred_tensor = _DeferredTensor(storage, args)
    deferred.append(deferred_tensor)
    return deferred_tensor

  result = _RestrictedUnpickler(file, load_storage, rebuild_tensor=rebuild).load()
  keys = _RestrictedUnpickler(file, no_storages).load()
  if not isinstance(keys, list) or set(map(str, keys)) != set(pending):
    raise pickle.UnpicklingError('the storage key list does not match the tensors')
  storages = {}
  for key in keys:
    dtype, numel = pending[str(key)]
    count = np.frombuffer(_read_exactly(file, 8), '<i8')[0]
    if count != numel:
      raise pickle.UnpicklingError(f'storage {key} has {count} elements, expected {numel}')
    storages[str(key)] = np.frombuffer(_read_exactly(file, numel * dtype.itemsize), dtype)
  return _resolve(result, storages)


def _resolve(obj: Any, storages: dict[str, np.ndarray]) -> Any:
  if isinstance(obj, _DeferredTensor):
    return _rebuild_tensor_v2(storages[obj.key], *obj.args)
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _resolve(v, storages)) for k, v in obj.items())
  return obj


def _read_exactly(file: BinaryIO, n: int) -> bytes:
  data = file.read(n)
  if len(data) != n:
    raise EOFError('the file ends in the middle of a storage')
  return data


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict safely.

  Args:
    path: a `.pth` file written by `torch.save(state_dict)` (zip or legacy format).

  Returns:
    {name: numpy array} in the file's order, with PyTorch's layouts (conv weights OIHW).

  Raises:
    UserError: the file is missing, truncated, not a state dict, or its pickle asks for
      anything beyond tensors (nothing it names is ever called).
  """
  path = os.fspath(path)
  try:
    if zipfile.is_zipfile(path):
      state = _read_zip(path)
    else:
      with open(path, 'rb') as file:
        state = _read_legacy(file)
  except FileNotFoundError:
    raise UserError(f'The weights file {path} does not exist.') from None
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError,
          TypeError, IndexError, AttributeError, OSError) as e:
    raise UserError(f'Cannot load {path} as a PyTorch state dict '
                    f'(a trusted, complete .pth of tensors is required): {e}') from None
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
    raise UserError(f'{path} is not a state dict of named tensors.')
  return dict(state)
