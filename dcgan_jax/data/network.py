"""A quick look at the network before tfds downloads a dataset.

Offline (a cluster's compute node, a machine behind a firewall), tfds tries each download URL
with urllib3's retries and growing back-off: ``mnist`` took 3.5 minutes of repeated warnings on
a machine without DNS before its error. When none of the hosts a download would use resolves,
:func:`check_download_hosts` says so at once instead. It decides nothing when it cannot tell:
behind a proxy (the proxy resolves names, so local DNS may fail while downloads work), when
tfds does not list the dataset's URLs, or under ``tfds.testing.mock_data`` (no download), tfds
is left to go on.
"""
from __future__ import annotations

import socket
from typing import Any
import urllib.parse
import urllib.request

from dcgan_jax.errors import UserError

# tfds first looks for an already prepared copy in its public bucket, then downloads the
# dataset's own URLs; reaching either is enough.
TFDS_BUCKET_HOST = 'storage.googleapis.com'


def download_hosts(builder: Any) -> list[str]:
  """The hosts of the URLs tfds lists for ``builder``'s download (empty when it lists none)."""
  try:
    urls = builder.url_infos or {}
  except Exception:  # pylint: disable=broad-except  # Builders without a checksums file.
    return []
  return sorted({urllib.parse.urlparse(url).hostname for url in urls} - {None})


def _resolves(host: str) -> bool:
  try:
    socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
  except OSError:  # socket.gaierror: unknown name, no resolver, ...
    return False
  return True


def check_download_hosts(builder: Any, name: str, data_dir: str,
                         alternative: str = 'train on local files (dataset=folder, array or '
                                            'digits)') -> None:
  """Raises a UserError when the download of ``builder``'s dataset cannot reach any host.

  Args:
    builder: an unprepared ``tfds.core.DatasetBuilder``.
    name: the dataset's name, for the message.
    data_dir: the folder tfds would prepare it into, for the message.
    alternative: what else the user can do, ending the message.

  Raises:
    UserError: none of the dataset's download hosts, nor tfds' bucket, resolves.
  """
  if set(urllib.request.getproxies()) - {'no'}:  # 'no' (no_proxy) alone sets no proxy.
    return
  method = getattr(type(builder), 'download_and_prepare', None)
  if getattr(method, '__module__', '').startswith('tensorflow_datasets.testing'):
    return  # Under tfds.testing.mock_data, which downloads nothing (users' tests, ours).
  hosts = download_hosts(builder)
  if not hosts:
    return
  hosts = sorted(set(hosts) | {TFDS_BUCKET_HOST})
  if any(_resolves(host) for host in hosts):
    return
  raise UserError(
      f'Cannot download dataset {name!r}: none of the hosts tfds would use '
      f'({", ".join(hosts)}) resolves, so this machine looks offline. Prepare it once where '
      f'there is a network (the same command, or tfds.builder({name!r}).download_and_prepare()) '
      f'and copy the prepared folder to {data_dir}, or {alternative}.')
