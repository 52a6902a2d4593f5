"""A tfds download on a machine without a network fails at once, with what to do instead.

Nothing here reaches the network: every test replaces name lookups (``socket.getaddrinfo``) and
tfds' download, and the URLs of the stand-in builders use reserved names (RFC 2606/6761).
"""
import pathlib
import socket
import time
import types

import pytest

from dcgan_jax.data import network
from dcgan_jax.errors import UserError

_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'default.py'
_PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY',
                    'ALL_PROXY')


@pytest.fixture
def looked_up(monkeypatch):
  """No proxy, and every name lookup fails (offline); returns the hosts that were looked up."""
  for variable in _PROXY_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  hosts = []

  def offline(host, *args, **kwargs):
    hosts.append(host)
    raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')

  monkeypatch.setattr(socket, 'getaddrinfo', offline)
  return hosts


def _builder(*urls):
  return types.SimpleNamespace(url_infos={url: None for url in urls})


def test_offline_is_one_line_naming_the_hosts_and_the_ways_out(looked_up):
  builder = _builder('https://files.example.invalid/cifar-10-binary.tar.gz')
  with pytest.raises(UserError) as caught:
    network.check_download_hosts(builder, 'cifar10', '/data/tfds/cifar10/3.0.2')
  message = str(caught.value)
  assert message.startswith("Cannot download dataset 'cifar10'")
  assert '(files.example.invalid, storage.googleapis.com) resolves' in message
  assert 'looks offline' in message and '/data/tfds/cifar10/3.0.2' in message
  assert message.endswith('or train on local files (dataset=folder, array or digits).')
  assert '\n' not in message
  assert sorted(looked_up) == ['files.example.invalid', 'storage.googleapis.com']


def test_one_host_that_resolves_lets_tfds_try(looked_up, monkeypatch):
  offline = socket.getaddrinfo

  def only_the_bucket(host, *args, **kwargs):
    if host == network.TFDS_BUCKET_HOST:  # tfds may find a prepared copy there.
      return [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('192.0.2.1', 443))]  # TEST-NET-1
    return offline(host, *args, **kwargs)

  monkeypatch.setattr(socket, 'getaddrinfo', only_the_bucket)
  network.check_download_hosts(_builder('https://mirror.example.invalid/a.zip'), 'x', '/d')
  assert looked_up == ['mirror.example.invalid']  # Failed; then the bucket resolved.


@pytest.mark.parametrize('variable', ['https_proxy', 'HTTP_PROXY', 'all_proxy'])
def test_behind_a_proxy_names_are_not_looked_up(looked_up, monkeypatch, variable):
  """The proxy resolves names, so a local lookup that fails says nothing about downloads."""
  monkeypatch.setenv(variable, 'http://proxy.example.invalid:3128')
  network.check_download_hosts(_builder('https://files.example.invalid/a.zip'), 'x', '/d')
  assert looked_up == []


def test_no_proxy_alone_is_not_a_proxy(looked_up, monkeypatch):
  monkeypatch.setenv('no_proxy', 'localhost')
  with pytest.raises(UserError, match='looks offline'):
    network.check_download_hosts(_builder('https://files.example.invalid/a.zip'), 'x', '/d')


def test_a_builder_that_lists_no_urls_is_left_to_tfds(looked_up):
  network.check_download_hosts(types.SimpleNamespace(url_infos=None), 'x', '/d')

  class NoChecksums:
    @property
    def url_infos(self):
      raise FileNotFoundError('checksums.tsv')

  network.check_download_hosts(NoChecksums(), 'x', '/d')
  assert looked_up == []


# ---- through the input pipeline (tfds) ------------------------------------------------------


def test_offline_mnist_fails_before_tfds_tries_to_download(looked_up, tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  downloads = []

  def stand_in(self, *args, **kwargs):  # Records the call and ends it: nothing is fetched.
    downloads.append(self.name)
    raise RuntimeError('stand-in download')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', stand_in)
  config = load_config(_DEFAULT_CONFIG)
  config.update(dataset='mnist', data_dir=str(tmp_path / 'tfds'))
  start = time.monotonic()
  with pytest.raises(UserError, match=r"Cannot download dataset 'mnist'.*looks offline") as caught:
    input_pipeline.dataset_info(config)
  assert time.monotonic() - start < 30  # tfds' own retries took 3.5 minutes here.
  assert downloads == [] and 'storage.googleapis.com' in looked_up
  assert str(tmp_path / 'tfds' / 'mnist') in str(caught.value)

  # With a network, the download goes ahead (here into the stand-in above).
  monkeypatch.setattr(socket, 'getaddrinfo', lambda *args, **kwargs: [])
  with pytest.raises(UserError, match=r"tfds could not download or prepare 'mnist'.*stand-in"):
    input_pipeline.dataset_info(config)
  assert downloads == ['mnist']


def test_offline_celeb_a_points_to_the_hand_download(looked_up, tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def no_download(self, *args, **kwargs):
    raise AssertionError('the check must stop the run before any download')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
  from dcgan_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = load_config(_DEFAULT_CONFIG)
  config.update(dataset='celeb_a', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match='looks offline') as caught:
    input_pipeline.dataset_info(config)
  assert 'drive.google.com' in str(caught.value)
  assert str(caught.value).endswith('--config.dataset_path to the zip or its folder.')


def test_mock_data_downloads_nothing_so_the_network_is_not_asked(looked_up, tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  from dcgan_jax.data import sources  # pylint: disable=g-import-not-at-top
  from dcgan_jax.config_files import load_config  # pylint: disable=g-import-not-at-top
  config = load_config(_DEFAULT_CONFIG)
  config.update(dataset='mnist', data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=2):
    assert sources.resolve_source(config).builder.name == 'mnist'
  assert looked_up == []
