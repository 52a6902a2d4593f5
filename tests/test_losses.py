"""GAN losses against values computed by hand; penalties on cases with a known answer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import losses
from dcgan_jax.errors import UserError

REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])


def _sig(x):
  return 1.0 / (1.0 + math.exp(-x))


def _bce(logit, target):
  p = _sig(logit)
  return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_non_saturating_by_hand():
  d = np.mean([_bce(2.0, 1), _bce(-1.0, 1)]) + np.mean([_bce(0.5, 0), _bce(-3.0, 0)])
  g = np.mean([-math.log(_sig(0.5)), -math.log(_sig(-3.0))])
  assert float(losses.non_saturating_d_loss(REAL, FAKE)) == pytest.approx(d, rel=1e-6)
  assert float(losses.non_saturating_g_loss(FAKE)) == pytest.approx(g, rel=1e-6)


def test_label_smoothing_by_hand():
  d = np.mean([_bce(2.0, 0.9), _bce(-1.0, 0.9)]) + np.mean([_bce(0.5, 0), _bce(-3.0, 0)])
  assert float(losses.non_saturating_d_loss(REAL, FAKE, 0.9)) == pytest.approx(d, rel=1e-6)


def test_minimax_by_hand():
  g = np.mean([math.log(1 - _sig(0.5)), math.log(1 - _sig(-3.0))])
  assert float(losses.minimax_g_loss(FAKE)) == pytest.approx(g, rel=1e-6)
  assert losses.get_loss('minimax').d_loss is losses.non_saturating_d_loss


def test_hinge_by_hand():
  # relu(1-2)=0, relu(1+1)=2 -> 1.0 ; relu(1+0.5)=1.5, relu(1-3)=0 -> 0.75
  assert float(losses.hinge_d_loss(REAL, FAKE)) == pytest.approx(1.75)
  assert float(losses.hinge_g_loss(FAKE)) == pytest.approx(1.25)


def test_least_squares_by_hand():
  d = 0.5 * np.mean([(2 - 1) ** 2, (-1 - 1) ** 2]) + 0.5 * np.mean([0.25, 9.0])
  assert float(losses.least_squares_d_loss(REAL, FAKE)) == pytest.approx(d)
  g = 0.5 * np.mean([(0.5 - 1) ** 2, (-3 - 1) ** 2])
  assert float(losses.least_squares_g_loss(FAKE)) == pytest.approx(g)


def test_wasserstein_by_hand():
  assert float(losses.wasserstein_d_loss(REAL, FAKE)) == pytest.approx(-1.25 - 0.5)
  assert float(losses.get_loss('wasserstein').g_loss(FAKE)) == pytest.approx(1.25)


def test_bce_losses_are_finite_for_extreme_logits():
  big = jnp.array([1e4, -1e4], jnp.float32)
  for name in losses.LOSSES:
    pair = losses.get_loss(name)
    assert np.isfinite(float(pair.d_loss(big, -big))) and np.isfinite(float(pair.g_loss(big)))
  bf16 = jnp.array([30.0, -30.0], jnp.bfloat16)
  assert np.isfinite(float(losses.non_saturating_d_loss(bf16, bf16)))


def test_unknown_loss_lists_valid_names():
  with pytest.raises(UserError) as err:
    losses.get_loss('bce')
  for name in losses.LOSSES:
    assert name in str(err.value)


def test_gradient_penalty_known_answer():
  # D(x) = <w, x>: the input gradient is w everywhere, so the penalty is (||w|| - 1)^2.
  w = jnp.arange(12.0).reshape(1, 2, 2, 3) / 10.0
  logits_fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real = jax.random.normal(jax.random.key(0), (4, 2, 2, 3))
  fake = jax.random.normal(jax.random.key(1), (4, 2, 2, 3))
  expected = (float(jnp.linalg.norm(w)) - 1.0) ** 2
  got = losses.gradient_penalty(logits_fn, real, fake, jax.random.key(2))
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_uses_interpolates():
  # D(x) = 0.5 * ||x||^2 per example: the gradient at x_hat is x_hat itself.
  logits_fn = lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2, 3))
  real = jnp.ones((2, 1, 1, 1)) * 3.0
  fake = jnp.zeros((2, 1, 1, 1))
  eps = jnp.array([0.5, 1.0])  # x_hat = 1.5 and 3.0 -> (1.5-1)^2, (3-1)^2
  got = losses.gradient_penalty(logits_fn, real, fake, eps=eps)
  assert float(got) == pytest.approx((0.25 + 4.0) / 2)


def test_r1_penalty_known_answer():
  # D(x) = 0.5 * ||x||^2 -> grad = x -> R1 = 0.5 * mean ||x||^2.
  logits_fn = lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2, 3))
  real = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 1, 1, 2)
  expected = 0.5 * np.mean([1 + 4, 9 + 16])
  assert float(losses.r1_penalty(logits_fn, real)) == pytest.approx(expected)
