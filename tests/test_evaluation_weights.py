"""Safe weight loading: .pth without torch or pickled code, .npz, names, shapes, hash, download."""
import collections
import io
import os
import pickle
import shlex
import zipfile

import numpy as np
import pytest

from dcgan_jax import evaluation
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation import download_weights
from dcgan_jax.evaluation import safe_pth
from dcgan_jax.evaluation import weights


def _random_state_dict(seed=0):
  """A complete, correctly shaped FID Inception state dict (PyTorch names and layouts)."""
  rng = np.random.default_rng(seed)
  state = collections.OrderedDict()
  for name, shape in weights.expected_torch_shapes().items():
    state[name] = rng.normal(size=shape).astype(np.float32)
    if name.endswith('running_var'):
      state[name] = np.abs(state[name]) + 0.5
      state[name.replace('running_var', 'num_batches_tracked')] = np.array(7, np.int64)
  return state


def _torch_save(state, path, legacy=False):
  torch = pytest.importorskip('torch')
  tensors = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state.items())
  torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
  return path


@pytest.fixture(scope='module')
def state_dict():
  return _random_state_dict()


@pytest.fixture(scope='module')
def pth_file(tmp_path_factory, state_dict):
  return _torch_save(state_dict, tmp_path_factory.mktemp('weights') / 'inception.pth')


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_pth_is_read_exactly_without_torch(tmp_path, state_dict, legacy):
  path = _torch_save(state_dict, tmp_path / 'inception.pth', legacy=legacy)
  loaded = safe_pth.read_pth(path)
  assert list(loaded) == list(state_dict)
  for name, value in state_dict.items():
    assert loaded[name].dtype == value.dtype
    np.testing.assert_array_equal(loaded[name], value)


def test_non_contiguous_and_shared_storage_views(tmp_path):
  torch = pytest.importorskip('torch')
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = collections.OrderedDict(t=base.t(), row=base[2], narrow=base[:, 1:3],
                                  half=torch.ones(3, dtype=torch.float16),
                                  param=torch.nn.Parameter(torch.full((2,), 3.0)))
  for legacy in (False, True):
    torch.save(state, tmp_path / 'views.pth', _use_new_zipfile_serialization=not legacy)
    loaded = safe_pth.read_pth(tmp_path / 'views.pth')
    for name, value in state.items():
      np.testing.assert_array_equal(loaded[name], value.detach().numpy())


def test_variables_are_mapped_by_name_with_layout_conversion(state_dict):
  variables = weights.state_dict_to_variables(state_dict)
  conv = variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel']
  torch_conv = state_dict['Mixed_6b.branch7x7_2.conv.weight']  # [O, I, 1, 7]
  assert conv.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(conv[0, 5, 3, 2], torch_conv[2, 3, 0, 5])
  np.testing.assert_array_equal(variables['params']['fc']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(variables['params']['Mixed_7c']['branch_pool']['bn']['scale'],
                                state_dict['Mixed_7c.branch_pool.bn.weight'])
  np.testing.assert_array_equal(
      variables['batch_stats']['Conv2d_1a_3x3']['bn']['var'],
      state_dict['Conv2d_1a_3x3.bn.running_var'])
  leaves = [leaf for tree in variables.values() for leaf in _leaves(tree)]
  assert len(leaves) == 472


def _leaves(tree):
  for value in tree.values():
    yield from (_leaves(value) if isinstance(value, dict) else [value])


def test_npz_round_trip_gives_the_same_variables(tmp_path, state_dict):
  npz = tmp_path / 'inception.npz'
  weights.save_npz(state_dict, npz)
  from_npz = evaluation.load_inception_variables(npz)
  expected = weights.state_dict_to_variables(state_dict)
  for a, b in zip(_leaves(from_npz), _leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)


def _write_pickle_zip(path, payload: bytes):
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', payload)
    archive.writestr('archive/version', '3\n')
  return path


class _ShellCommand:
  """Pickles into a call of os.system, as an attacker's .pth would."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


@pytest.mark.parametrize('container', ['zip', 'legacy', 'inside_state_dict'])
def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path, container):
  marker = tmp_path / 'pwned'
  payload = _ShellCommand(f'touch {shlex.quote(str(marker))}')
  if container == 'inside_state_dict':
    blob = pickle.dumps(collections.OrderedDict([('fc.bias', payload)]), protocol=2)
  else:
    blob = pickle.dumps(payload, protocol=2)
  path = tmp_path / 'evil.pth'
  if container == 'legacy':
    path.write_bytes(blob)
  else:
    _write_pickle_zip(path, blob)
  with pytest.raises(UserError, match='refusing to load global (posix|os|nt).system'):
    weights.load_inception_variables(path)
  assert not marker.exists()
  # The payload is live: a plain unpickler would have run the command.
  pickle.loads(blob)
  assert marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.npz'
  np.savez(path, **{'fc.bias': np.array([_ShellCommand(f'touch {shlex.quote(str(marker))}')],
                                        dtype=object)})
  with pytest.raises(UserError, match='plain arrays'):
    weights.load_inception_variables(path)
  assert not marker.exists()


@pytest.mark.parametrize('module,name', [('torch.storage', '_load_from_bytes'),
                                         ('builtins', 'eval'), ('torch', 'load')])
def test_only_state_dict_globals_are_allowed(tmp_path, module, name):
  blob = b'\x80\x02c' + f'{module}\n{name}\n'.encode() + b')R.'
  with pytest.raises(UserError, match=f'refusing to load global {module}.{name}'):
    safe_pth.read_pth(_write_pickle_zip(tmp_path / 'bad.pth', blob))


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_truncated_file_is_a_clear_error(tmp_path, state_dict, legacy):
  path = _torch_save(state_dict, tmp_path / 'full.pth', legacy=legacy)
  data = path.read_bytes()
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(data[:len(data) // 2])
  # A zip cut short (an interrupted download) lost its central directory: said so, rather than
  # the legacy reader's "unsupported persistent id" and a run of binary.
  expected = ('Cannot load .*truncated.pth' if legacy else
              'truncated.pth begins as a zip .* its end is missing: the file is incomplete')
  with pytest.raises(UserError, match=expected):
    weights.load_inception_variables(truncated)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
  torch = pytest.importorskip('torch')

  class Storage:
    pass

  class Tensor:
    """Pickles like a torch tensor of `size` elements on a 2-element storage."""

    def __init__(self, size):
      self.size = size

    def __reduce__(self):
      rebuild = torch._utils._rebuild_tensor_v2  # pylint: disable=protected-access
      return rebuild, (Storage(), 0, (self.size,), (1,), False, collections.OrderedDict())

  class Pickler(pickle.Pickler):

    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ('storage', torch.FloatStorage, '0', 'cpu', 2)
      return None

  def write(size, path):
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(collections.OrderedDict(x=Tensor(size)))
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('archive/data.pkl', buffer.getvalue())
      archive.writestr('archive/data/0', np.array([1.0, 2.0], np.float32).tobytes())
    return path

  # The crafting is right: an honest 2-element tensor loads.
  np.testing.assert_array_equal(safe_pth.read_pth(write(2, tmp_path / 'ok.pth'))['x'], [1, 2])
  # A 4-element view of the 2-element storage would read foreign memory.
  with pytest.raises(UserError, match='past the end of its storage'):
    safe_pth.read_pth(write(4, tmp_path / 'lying.pth'))


def test_wrong_shape_is_a_clear_error(tmp_path, state_dict):
  state = collections.OrderedDict(state_dict)
  # The bug a public JAX port shipped: the wrong width in Mixed_6b's 7x7 branch.
  state['Mixed_6b.branch7x7_2.conv.weight'] = np.zeros((192, 192, 1, 7), np.float32)
  path = tmp_path / 'wrong.npz'
  weights.save_npz(state, path)
  with pytest.raises(UserError, match=r'Mixed_6b.branch7x7_2.conv.weight has shape '
                                      r'\(192, 192, 1, 7\).*needs \(128, 128, 1, 7\)'):
    weights.load_inception_variables(path)


def test_missing_and_unexpected_tensors_are_clear_errors(state_dict):
  state = dict(state_dict)
  del state['Mixed_7c.branch_pool.bn.running_mean']
  with pytest.raises(UserError, match='lacks 1 .*Mixed_7c.branch_pool.bn.running_mean'):
    weights.state_dict_to_variables(state)
  state = dict(state_dict, **{'AuxLogits.fc.weight': np.zeros((1000, 768), np.float32)})
  with pytest.raises(UserError, match='AuxLogits.fc.weight'):
    weights.state_dict_to_variables(state)


def test_sha256_in_the_file_name_is_verified(tmp_path, pth_file):
  digest = weights.sha256_of(pth_file)
  good = tmp_path / f'inception-{digest[:8]}.pth'
  good.write_bytes(pth_file.read_bytes())
  weights.load_inception_variables(good)  # Loads: the name's hash is right.
  wrong_digit = '0' if digest[0] != '0' else '1'
  bad = tmp_path / f'pt_inception-2015-12-05-{wrong_digit}{digest[1:8]}.pth'
  bad.write_bytes(pth_file.read_bytes())
  with pytest.raises(UserError, match='SHA-256'):
    evaluation.InceptionExtractor.from_file(bad)
  assert weights.expected_sha256_prefix(weights.WEIGHTS_FILENAME) == '6726825d'


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  for path in (tmp_path / 'nope.pth', None, ''):
    with pytest.raises(UserError) as error:
      evaluation.InceptionExtractor.from_file(path)
    message = str(error.value)
    assert weights.PYTORCH_FID_WEIGHTS_URL in message
    assert 'python -m dcgan_jax.evaluation.download_weights' in message
    assert str(tmp_path / 'cache' / 'dcgan_jax') in message
  with pytest.raises(UserError, match=f'--inception_weights {tmp_path} is a folder; give the '
                                      f'weights file, {weights.WEIGHTS_FILENAME}'):
    evaluation.InceptionExtractor.from_file(tmp_path)  # Was "not found at <the folder>".


def test_download_verifies_and_caches(tmp_path, pth_file):
  digest = weights.sha256_of(pth_file)
  source = tmp_path / 'server' / f'weights-inception-{digest[:8]}.pth'
  source.parent.mkdir()
  source.write_bytes(pth_file.read_bytes())
  cache = tmp_path / 'cache'
  path = evaluation.download_inception_weights(url=source.as_uri(), cache_dir=cache)
  assert path == cache / source.name
  assert path.read_bytes() == source.read_bytes()
  source.unlink()  # A second call must not need the network (or the source).
  assert evaluation.download_inception_weights(url=source.as_uri(), cache_dir=cache) == path


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, pth_file):
  source = tmp_path / 'server' / 'weights-0123abcd.pth'
  source.parent.mkdir()
  source.write_bytes(pth_file.read_bytes())
  cache = tmp_path / 'cache'
  with pytest.raises(UserError, match='SHA-256'):
    evaluation.download_inception_weights(url=source.as_uri(), cache_dir=cache)
  assert list(cache.iterdir()) == []
  with pytest.raises(UserError, match='failed'):
    evaluation.download_inception_weights(url=(tmp_path / 'absent.pth').as_uri(),
                                          cache_dir=cache)


def test_download_command_uses_the_user_cache(tmp_path, monkeypatch, capsys, pth_file):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  source = tmp_path / weights.WEIGHTS_FILENAME.replace('6726825d', weights.sha256_of(pth_file)[:8])
  source.write_bytes(pth_file.read_bytes())
  npz = tmp_path / 'copy.npz'
  assert download_weights.main(['--url', source.as_uri(), '--to_npz', str(npz)]) == 0
  cached = tmp_path / 'xdg' / 'dcgan_jax' / source.name
  assert capsys.readouterr().out.strip() == str(cached)
  assert cached.is_file() and npz.is_file()
  bad = tmp_path / 'weights-ffffffff.pth'
  bad.write_bytes(b'not weights')
  assert download_weights.main(['--url', bad.as_uri()]) == 2
  assert 'SHA-256' in capsys.readouterr().err


def test_module_state_dict_with_metadata_is_read(tmp_path):
  """A real `module.state_dict()` carries `_metadata` (pickled as BUILD on the OrderedDict)."""
  torch = pytest.importorskip('torch')
  module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
  state = module.state_dict()
  assert hasattr(state, '_metadata')
  torch.save(state, tmp_path / 'module.pth')
  loaded = safe_pth.read_pth(tmp_path / 'module.pth')
  assert list(loaded) == list(state)
  for name, value in state.items():
    np.testing.assert_array_equal(loaded[name], value.numpy())
