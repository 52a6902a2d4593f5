"""Reads PyTorch `.pth` state dicts without torch and without unpickling.

A `.pth` file holds a pickle, and unpickling runs whatever callables the pickle names: that is
how a hostile weights file runs code on the machine of whoever loads it. So this module never
unpickles. :func:`_interpret` reads the pickle's opcodes itself and builds only what a state
dict is made of: strings, numbers, booleans, None, tuples, lists, dicts, persistent ids (the
storages) and calls of three known names:

* `collections.OrderedDict` (the state dict itself and the tensors' empty hook dicts);
* `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, replaced by our own functions
  that build numpy arrays (nothing from torch is imported or called);
* plus the typed storage classes `torch.FloatStorage`, `torch.LongStorage`, ..., read as inert
  markers that only name a dtype (never called).

Any other global (`os.system`, `builtins.eval`, `torch.storage._load_from_bytes`, ...) or opcode
is refused as soon as it is read; nothing a file names is ever imported or called. Storage bytes
come from the archive through the persistent ids, and every tensor view is bounds-checked
against its storage.

Both serialisations torch writes are supported: the zip archive (torch >= 1.6: `<name>/data.pkl`
plus one `<name>/data/<key>` record per storage) and the legacy stream (magic number, protocol,
system info, the pickle, storage keys, then raw storages).
"""
import collections
import io
import os
import struct
import zipfile
from typing import Any, BinaryIO, Callable

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


class PthFormatError(ValueError):
  """The file is not a state dict of tensors that can be read without running its code."""


class _StorageType:
  """Inert stand-in for a torch storage class: it only names the element dtype."""
  __slots__ = ('name',)

  def __init__(self, name: str):
    self.name = name


class _Callable:
  """One of the few functions a state dict's pickle may call (REDUCE), by its pickled name."""
  __slots__ = ('name', 'function')

  def __init__(self, name: str, function: Callable[..., Any]):
    self.name = name
    self.function = function


class _LegacyStorage:
  """A storage of a legacy file, whose bytes come only after the pickle."""

  def __init__(self, key: str):
    self.key = key


class _DeferredTensor:
  """A tensor of a legacy file, rebuilt once its storage's bytes have been read."""

  def __init__(self, storage, args):
    if not isinstance(storage, _LegacyStorage):
      raise PthFormatError('a tensor refers to something that is not a storage')
    self.key = storage.key
    self.args = args


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """Our replacement of torch._utils._rebuild_tensor_v2: a bounds-checked numpy copy."""
  del requires_grad, backward_hooks, metadata  # Irrelevant for inference weights.
  if not isinstance(storage, np.ndarray):
    raise PthFormatError('a tensor refers to something that is not a storage')
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  storage_offset = int(storage_offset)
  if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
    raise PthFormatError(f'invalid tensor geometry size={size} stride={stride}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    # as_strided would read past the buffer: refuse rather than leak memory.
    raise PthFormatError('a tensor reaches past the end of its storage')
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)  # A contiguous, owned copy.


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
  del requires_grad, backward_hooks, args
  if not isinstance(data, (np.ndarray, _DeferredTensor)):
    raise PthFormatError('a parameter wraps something that is not a tensor')
  return data


def _allowed_globals(rebuild_tensor) -> dict[tuple[str, str], Any]:
  """The only globals a state dict may name."""
  return {
      ('collections', 'OrderedDict'): _Callable('collections.OrderedDict',
                                                collections.OrderedDict),
      ('torch._utils', '_rebuild_tensor_v2'): _Callable('_rebuild_tensor_v2', rebuild_tensor),
      ('torch._utils', '_rebuild_parameter'): _Callable('_rebuild_parameter',
                                                        _rebuild_parameter),
      **{('torch', name): _StorageType(name) for name in _STORAGE_DTYPES},
  }


_MARK = object()  # The stack marker of the MARK opcode.


def _interpret(file: BinaryIO, load_storage: Callable[[tuple], Any],
               rebuild_tensor: Callable[..., Any] = _rebuild_tensor_v2) -> Any:
  """Evaluates one pickle (protocols 0-5, the opcodes a state dict uses) from ``file``.

  Reads exactly up to the pickle's STOP opcode, so several pickles can follow each other in a
  stream (the legacy format). Values are built only from the pickle's literals, the globals of
  :func:`_allowed_globals` and ``load_storage`` (persistent ids).

  Raises:
    PthFormatError: an opcode, global or construct beyond a state dict.
    EOFError: the pickle ends before STOP.
  """
  allowed = _allowed_globals(rebuild_tensor)
  stack: list[Any] = []
  memo: dict[int, Any] = {}

  def take(n: int) -> bytes:
    data = file.read(n)
    if len(data) != n:
      raise EOFError('the pickle ends early')
    return data

  def line() -> str:
    data = file.readline()
    if not data.endswith(b'\n'):
      raise EOFError('the pickle ends early')
    return data[:-1].decode('utf-8')

  def since_mark() -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
      if stack[i] is _MARK:
        items = stack[i + 1:]
        del stack[i:]
        return items
    raise PthFormatError('a pickle opcode needs a MARK that is missing')

  def top(kind: type) -> Any:
    if not stack or not isinstance(stack[-1], kind):
      raise PthFormatError(f'a pickle opcode expected a {kind.__name__} on the stack')
    return stack[-1]

  def global_(module: str, name: str) -> Any:
    try:
      return allowed[(module, name)]
    except KeyError:
      raise PthFormatError(f'refusing to load global {module}.{name}: a weights file needs '
                           'only tensors') from None

  def set_items(target: dict, items: list[Any]) -> None:
    if len(items) % 2:
      raise PthFormatError('a dict update has a key without a value')
    for key, value in zip(items[::2], items[1::2]):
      target[key] = value

  unpack = lambda fmt, n: struct.unpack(fmt, take(n))[0]
  while True:
    op = take(1)
    if op == b'\x80':  # PROTO
      take(1)
    elif op == b'\x95':  # FRAME (a length hint)
      take(8)
    elif op == b'.':  # STOP
      if len(stack) != 1:
        raise PthFormatError('a pickle ends with a malformed stack')
      return stack.pop()
    elif op == b'(':
      stack.append(_MARK)
    elif op == b'N':
      stack.append(None)
    elif op in (b'\x88', b'\x89'):  # NEWTRUE, NEWFALSE
      stack.append(op == b'\x88')
    elif op == b'K':  # BININT1
      stack.append(take(1)[0])
    elif op == b'M':  # BININT2
      stack.append(unpack('<H', 2))
    elif op == b'J':  # BININT
      stack.append(unpack('<i', 4))
    elif op in (b'\x8a', b'\x8b'):  # LONG1, LONG4
      size = take(1)[0] if op == b'\x8a' else unpack('<i', 4)
      if not 0 <= size <= 64:
        raise PthFormatError('an integer in the pickle is implausibly long')
      stack.append(int.from_bytes(take(size), 'little', signed=True))
    elif op == b'I':  # INT (text; also True/False as 01/00)
      text = line()
      stack.append(True if text == '01' else False if text == '00' else int(text))
    elif op == b'G':  # BINFLOAT
      stack.append(unpack('>d', 8))
    elif op in (b'X', b'\x8c', b'\x8d'):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
      size = {b'X': lambda: unpack('<I', 4), b'\x8c': lambda: take(1)[0],
              b'\x8d': lambda: unpack('<Q', 8)}[op]()
      stack.append(take(size).decode('utf-8'))
    elif op in (b'B', b'C', b'T', b'U'):  # BINBYTES, SHORT_BINBYTES, BINSTRING, SHORT_BINSTRING
      size = take(1)[0] if op in (b'C', b'U') else unpack('<I', 4)
      data = take(size)
      stack.append(data if op in (b'B', b'C') else data.decode('latin-1'))
    elif op == b')':
      stack.append(())
    elif op == b']':
      stack.append([])
    elif op == b'}':
      stack.append({})
    elif op == b't':
      stack.append(tuple(since_mark()))
    elif op in (b'\x85', b'\x86', b'\x87'):  # TUPLE1-3
      n = op[0] - 0x84
      if len(stack) < n or any(x is _MARK for x in stack[-n:]):
        raise PthFormatError('a tuple opcode finds too few items')
      items = tuple(stack[-n:])
      del stack[-n:]
      stack.append(items)
    elif op == b'l':
      stack.append(since_mark())
    elif op == b'd':
      items = since_mark()
      stack.append({})
      set_items(stack[-1], items)
    elif op == b'a':  # APPEND
      value = stack.pop()
      top(list).append(value)
    elif op == b'e':  # APPENDS
      items = since_mark()
      top(list).extend(items)
    elif op == b's':  # SETITEM
      value, key = stack.pop(), stack.pop()
      set_items(top(dict), [key, value])
    elif op == b'u':  # SETITEMS
      items = since_mark()
      set_items(top(dict), items)
    elif op in (b'q', b'r', b'p', b'\x94'):  # BINPUT, LONG_BINPUT, PUT, MEMOIZE
      index = {b'q': lambda: take(1)[0], b'r': lambda: unpack('<I', 4),
               b'p': lambda: int(line()), b'\x94': lambda: len(memo)}[op]()
      if not stack:
        raise PthFormatError('a memo opcode finds an empty stack')
      memo[index] = stack[-1]
    elif op in (b'h', b'j', b'g'):  # BINGET, LONG_BINGET, GET
      index = {b'h': lambda: take(1)[0], b'j': lambda: unpack('<I', 4),
               b'g': lambda: int(line())}[op]()
      if index not in memo:
        raise PthFormatError(f'the pickle refers to memo entry {index}, which it never set')
      stack.append(memo[index])
    elif op == b'c':  # GLOBAL
      module = line()
      stack.append(global_(module, line()))
    elif op == b'\x93':  # STACK_GLOBAL
      name, module = stack.pop(), stack.pop()
      if not (isinstance(module, str) and isinstance(name, str)):
        raise PthFormatError('a global is named by something that is not a string')
      stack.append(global_(module, name))
    elif op == b'R':  # REDUCE: call an allowed function
      args, function = stack.pop(), stack.pop()
      if isinstance(function, _StorageType):
        raise PthFormatError(f'the pickle tried to call torch.{function.name}')
      if not isinstance(function, _Callable) or not isinstance(args, tuple):
        raise PthFormatError('the pickle calls something that is not an allowed function')
      stack.append(function.function(*args))
    elif op == b'b':  # BUILD: only a state dict's attributes (torch's `_metadata`), dropped
      stack.pop()
      top(collections.OrderedDict)
    elif op in (b'Q', b'P'):  # BINPERSID, PERSID
      pid = stack.pop() if op == b'Q' else line()
      if not (isinstance(pid, tuple) and pid and pid[0] in ('storage', b'storage')):
        raise PthFormatError(f'unsupported persistent id {pid!r:.80}')
      stack.append(load_storage(pid[1:]))
    else:
      raise PthFormatError(f'unsupported pickle opcode {op!r}: not part of a state dict')


def _storage_dtype(storage_type: Any) -> np.dtype:
  if not isinstance(storage_type, _StorageType) or storage_type.name not in _STORAGE_DTYPES:
    raise PthFormatError('a storage record does not name a storage type')
  return np.dtype(_STORAGE_DTYPES[storage_type.name])


def _read_zip(path: str) -> Any:
  """Loads the zip serialisation: `<name>/data.pkl` and `<name>/data/<key>` records."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
    if len(pickles) != 1:
      raise PthFormatError('the archive does not hold exactly one data.pkl')
    prefix = pickles[0][:-len('data.pkl')]
    if prefix + 'byteorder' in archive.namelist():
      if archive.read(prefix + 'byteorder') != b'little':
        raise PthFormatError('big-endian tensors are not supported')
    storages = {}

    def load_storage(record):
      storage_type, key, _location, numel = record[:4]
      dtype = _storage_dtype(storage_type)
      key = key.decode() if isinstance(key, bytes) else str(key)
      if key not in storages:
        raw = archive.read(f'{prefix}data/{key}')
        if len(raw) < int(numel) * dtype.itemsize:
          raise PthFormatError(f'storage {key} is shorter than its {numel} elements')
        storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel))
      return storages[key]

    return _interpret(io.BytesIO(archive.read(pickles[0])), load_storage)


def _read_legacy(file: BinaryIO) -> Any:
  """Loads the pre-1.6 stream: header pickles, the state-dict pickle, then raw storages."""
  def no_storages(record):
    raise PthFormatError('a header refers to a storage')

  header = lambda: _interpret(file, no_storages)
  if header() != _LEGACY_MAGIC_NUMBER:
    raise PthFormatError('not a PyTorch file (wrong magic number)')
  if header() != _LEGACY_PROTOCOL_VERSION:
    raise PthFormatError('unsupported legacy protocol version')
  sys_info = header()
  if not isinstance(sys_info, dict) or not sys_info.get('little_endian', False):
    raise PthFormatError('big-endian tensors are not supported')

  # The pickle comes before the storages' bytes, so it gets empty arrays that are filled below
  # (views into them are rebuilt lazily, after the bytes are in place).
  pending = {}  # key -> (dtype, numel)
  deferred = []

  def load_storage(record):
    storage_type, key, _location, numel, view_metadata = record
    if view_metadata is not None:
      raise PthFormatError('storage views are not supported')
    key = key.decode() if isinstance(key, bytes) else str(key)
    pending.setdefault(key, (_storage_dtype(storage_type), int(numel)))
    return _LegacyStorage(key)

  def rebuild(storage, *args):
    deferred_tensor = _DeferredTensor(storage, args)
    deferred.append(deferred_tensor)
    return deferred_tensor

  result = _interpret(file, load_storage, rebuild_tensor=rebuild)
  keys = _interpret(file, no_storages)
  if not isinstance(keys, list) or set(map(str, keys)) != set(pending):
    raise PthFormatError('the storage key list does not match the tensors')
  storages = {}
  for key in keys:
    dtype, numel = pending[str(key)]
    count = np.frombuffer(_read_exactly(file, 8), '<i8')[0]
    if count != numel:
      raise PthFormatError(f'storage {key} has {count} elements, expected {numel}')
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


def _starts_like_a_zip(path: str) -> bool:
  try:
    with open(path, 'rb') as file:
      return file.read(4) == b'PK\x03\x04'
  except OSError:
    return False


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
    elif _starts_like_a_zip(path):
      # A zip whose end (the central directory) is missing: an interrupted download. Read as a
      # legacy pickle, it failed with "unsupported persistent id" and a run of binary.
      raise UserError(f'{path} begins as a zip (a PyTorch .pth) but its end is missing: the file '
                      'is incomplete, e.g. a download that was cut short; download it again.')
    else:
      with open(path, 'rb') as file:
        state = _read_legacy(file)
  except FileNotFoundError:
    raise UserError(f'The weights file {path} does not exist.') from None
  except UserError:  # Already says what is wrong (a UserError is a ValueError).
    raise
  except (PthFormatError, zipfile.BadZipFile, EOFError, KeyError, ValueError,
          TypeError, IndexError, AttributeError, OSError, struct.error,
          UnicodeDecodeError) as e:
    raise UserError(f'Cannot load {path} as a PyTorch state dict '
                    f'(a trusted, complete .pth of tensors is required): {e}') from None
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
    raise UserError(f'{path} is not a state dict of named tensors.')
  return dict(state)
