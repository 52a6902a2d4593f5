"""Test-wide setup.

Eight fake CPU devices let every test exercise data parallelism (shard_map, pmap, BN sync) on a
machine without accelerators. XLA reads the flag when jax initialises its backends, so it must be
set before anything imports jax; subprocesses started by tests inherit it through the environment.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# TensorFlow (tfds input pipelines) must never grab accelerators or spam the test log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
