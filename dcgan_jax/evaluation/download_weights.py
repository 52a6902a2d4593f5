r"""Fetches the FID Inception weights into the user cache directory (needs network, once).

  python -m dcgan_jax.evaluation.download_weights [--url URL] [--cache_dir DIR] [--to_npz PATH]

Downloads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, checks its SHA-256 prefix,
loads it once to check every tensor, optionally writes a pickle-free `.npz` copy, and prints the
cached path (`$XDG_CACHE_HOME/dcgan_jax` or `~/.cache/dcgan_jax` by default, where
`InceptionExtractor.from_file(None)` and an empty `inception_weights` look for it).
"""
import argparse
import sys

from dcgan_jax.errors import EXIT_USER_ERROR
from dcgan_jax.errors import UserError
from dcgan_jax.evaluation import weights


def main(argv: list[str] | None = None) -> int:
  """Downloads, verifies and test-loads the weights, prints the cached path; returns exit code."""
  parser = argparse.ArgumentParser(description='Fetch (and check) the FID Inception weights.')
  parser.add_argument('--url', default=weights.PYTORCH_FID_WEIGHTS_URL)
  parser.add_argument('--cache_dir', default=None, help=f'default: {weights.default_cache_dir()}')
  parser.add_argument('--to_npz', default=None, help='also write a pickle-free .npz copy here')
  args = parser.parse_args(argv)
  try:
    path = weights.download_inception_weights(args.url, args.cache_dir)
    weights.load_inception_variables(path)  # Fails loudly now rather than at evaluation time.
    if args.to_npz:
      weights.save_npz(weights.read_state_dict(path), args.to_npz)
  except UserError as e:
    print(e, file=sys.stderr)
    return EXIT_USER_ERROR
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
