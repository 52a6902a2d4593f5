"""Test-wide setup.

Eight fake CPU devices let every test exercise data parallelism (shard_map, pmap, BN sync) on a
machine without accelerators. XLA reads the flag when jax initialises its backends, so it must be
set before anything imports jax; subprocesses started by tests inherit it through the environment.

JAX's persistent compilation cache is shared by the whole run (both xdist workers and every
subprocess they start): many tests start ``python -m dcgan_jax.main`` or build the same small
models, and on two CPU cores compiling is most of their cost. Each run gets a fresh cache, so
nothing carries over between runs; a size limit turns on JAX's file lock, so that processes
never read an entry another one is still writing.
"""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# TensorFlow (tfds input pipelines) must never grab accelerators or spam the test log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# The controller (or a plain pytest) runs this first and creates the cache; xdist workers
# inherit the variable. A user's own JAX_COMPILATION_CACHE_DIR is left alone.
_CREATED_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CREATED_CACHE = tempfile.mkdtemp(prefix="dcgan_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CREATED_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 * 1024**3))


# torchvision (through pytorch-fid, in the parity tests) segfaults when it loads after TensorFlow
# in one process; loaded first, both work. Each xdist worker runs whichever tests it is given, so
# load them here, before any test module imports TensorFlow. (torch is test-only.)
try:
  import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass


def pytest_unconfigure(config):
  if _CREATED_CACHE and not hasattr(config, "workerinput"):  # The process that made it.
    shutil.rmtree(_CREATED_CACHE, ignore_errors=True)
