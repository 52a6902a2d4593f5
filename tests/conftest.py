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
import fcntl
import os
import pathlib
import shutil
import tempfile

import pytest

# LLVM's optimisation level 1 for XLA's CPU code: the tests' programs are small and run a few
# times each, so compiling is most of their cost. Measured on 2 cores (tests/test_models.py with
# test_train_step.py; the --tiny FID benchmark, which runs Inception at 299x299): default (-O2)
# 131 s and 38 s, -O1 78 s and 35 s, -O0 70 s and 49 s (its slow code costs more than it saves
# wherever a test really computes). XLA's own HLO passes (fusion, layout, SPMD partitioning)
# run either way, and the numerics stay IEEE (XLA's CPU fast-math is off at every level).
# Subprocesses that set their own device count add $DCGAN_JAX_TEST_XLA_FLAGS; those that stand
# for a plain machine (the quality bar, the notebook) use it alone: one device. The default
# config's full run writes the same quality.json at either level (checked), in 92 s vs 97 s.
# The whole suite (2026-11-29, `-n 2`): 772 s at -O1, 820 s at -O0 (the 8-device step tests
# compile ~25% faster, the notebook and the Inception tests run 40-70% slower). The CPUs are
# busy all along (user + sys = 96% of 2 cores), so more workers would not help either.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"
os.environ.setdefault("DCGAN_JAX_TEST_XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
# Files whose tests compile many programs and run each once or twice on tiny arrays (train steps
# over 8 devices, augmentations with double backprop): compiling is nearly all of their time, so
# their own process compiles with JAX's jax_disable_most_optimizations (LLVM -O0 without its
# expensive passes; XLA's HLO passes run as ever, fast-math stays off). Measured on 2 busy cores
# (2026-12-07): the ADA step of test_augment compiles in 12.6 s instead of 19.2 s; these two
# files ran with 250 s of CPU instead of 318 s (both settings at once, same load), all passing.
# Only these files: subprocesses keep $XLA_FLAGS, and files that really compute (Inception, the
# notebook, training runs: test_conditional trains some) stay at -O1, where -O0 made them 40-70%
# slower. DCGAN_JAX_TEST_FAST_COMPILE=0 turns it off (to compare).
FAST_COMPILE_FILES = ('test_augment.py', 'test_train_step.py')
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


# ---- the digits classifier, trained once per run ----------------------------------------------
# Several tests run the training program or the notebook, whose quality score needs the digits
# classifier (seconds to train, then cached per user). Training it once per test run and copying
# the cache file into each test's own cache folder keeps those tests isolated without paying for
# the training each time; tests/test_quality.py covers the training and caching themselves.


@pytest.fixture(scope="session")
def digits_classifier_cache(tmp_path_factory):
  """A folder with the trained digits classifier's cache file, shared by all xdist workers."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The workers' base folders are siblings.
  folder = root / "digits_quality_cache"
  folder.mkdir(exist_ok=True)
  with open(root / "digits_quality_cache.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Another worker may be training: wait, then load.
    from dcgan_jax import quality  # pylint: disable=g-import-not-at-top
    quality.DigitsQuality.load_or_train(str(folder))
  return folder


@pytest.fixture
def seed_digits_classifier(digits_classifier_cache):
  """Returns ``seed(xdg_cache_home)``, which puts the trained classifier where runs look for it."""
  def seed(xdg_cache_home):
    target = pathlib.Path(xdg_cache_home) / "dcgan_jax"  # quality.default_cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for path in digits_classifier_cache.glob("digits_classifier-*.npz"):
      shutil.copyfile(path, target / path.name)
    return target
  return seed


# ---- scheduling for `pytest -n 2` ---------------------------------------------------------------
# pyproject.toml makes xdist hand out whole test files (`--dist loadfile`: a module's fixtures,
# such as test_kill_resume's 11 training processes, are never built twice on two workers) in
# collection order (`--no-loadscope-reorder`; xdist's own order is by test count, which put the
# one-test notebook last). These files hold most of the suite's time; started first, the two
# workers stay busy to the end instead of one finishing a long file alone (longest first is the
# classic greedy schedule). Seconds per file on 2 cores (2026-12-06, --durations, a run slowed
# by other work beside it; whole suite ~2,660 s of work): augment 308, train 303, train_step
# 272, benchmarks 255, fid_cli 181, evaluate_cli 181, notebook 170 (one test: it goes early),
# conditional 169, kill_resume 143, main_cli 82, models 76, preemption 75.
# Every other file follows in pytest's order.
LONGEST_FILES_FIRST = ('test_augment.py', 'test_train.py', 'test_notebook.py',
                       'test_train_step.py', 'test_benchmarks.py', 'test_fid_cli.py',
                       'test_evaluate_cli.py', 'test_conditional.py', 'test_kill_resume.py',
                       'test_main_cli.py', 'test_models.py', 'test_preemption.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: order within kept.


@pytest.fixture(scope='module', autouse=True)
def _fast_compile_where_tests_only_compile(request):
  """jax_disable_most_optimizations for the files in FAST_COMPILE_FILES (see above).

  Module-scoped, so that it is set before the file's own module fixtures build anything: -O0
  and -O1 agree to float32 rounding but not bit for bit (a state initialised at one level is
  not bit-identical to the same state initialised at the other)."""
  if (request.path.name not in FAST_COMPILE_FILES
      or os.environ.get('DCGAN_JAX_TEST_FAST_COMPILE', '1') == '0'):
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  before = bool(getattr(jax.config, 'values', {}).get('jax_disable_most_optimizations', False))
  # The flag is no part of JAX's in-memory cache keys: cleared on the way in, nothing compiled
  # at -O1 before (an eager op, a module-level jit) runs here beside the file's -O0 programs; on
  # the way out, nothing compiled here runs in the worker's later files.
  jax.clear_caches()
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)
  jax.clear_caches()
