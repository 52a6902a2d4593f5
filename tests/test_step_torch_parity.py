"""The GAN step against the pytorch/examples DCGAN iteration in torch: same weights, same inputs.

``make_train_step`` claims to compute the reference's update: D on real (label 1) and on
``G(z).detach()`` (label 0), Adam step on D, then D -- already updated, still in training mode --
on the same fakes with label 1, Adam step on G. Here the JAX initial variables are copied into
``experiments/benchmark_train.torch_models`` (the pytorch/examples layers), both sides train two
iterations on the same real images and latents, and everything the step produces is compared:
losses, metrics, gradients (Adam's moments), params and BatchNorm running statistics.

Torch runs in float64, so it serves as the exact answer and the differences measure our float32
step. The comparisons are relative to each tensor's largest entry: float32 sums carry errors
relative to their terms, so elementwise relative errors of near-cancelling entries say nothing.

Layouts (flax -> torch), found by matching forward passes (``test_forward_passes_match``):

* G's ``project`` Dense ``[nz, 4*4*F]`` (reshaped to ``[4, 4, F]`` in the model) is the
  reference's ConvTranspose2d(nz, F, 4, 1, 0) on a 1x1 input: weight ``[nz, F, 4, 4]``.
* ``nn.ConvTranspose`` (``transpose_kernel=False``) does not flip its kernel, torch's
  ConvTranspose2d (the gradient of a convolution) does: weight = kernel flipped in H and W,
  ``[H, W, in, out] -> [in, out, H, W]``.
* ``nn.Conv`` ``[H, W, in, out]`` -> Conv2d ``[out, in, H, W]`` (both cross-correlate).
* BatchNorm scale/bias/mean/var -> weight/bias/running_mean/running_var; flax momentum 0.9 keeps
  0.9 of the old statistic, torch momentum 0.1 mixes in 0.1 of the new one: the same average.

One documented difference: torch's running variance averages the *unbiased* batch variance
(``n / (n - 1)`` times the biased one, n = N*H*W per channel), flax's the biased one (both
normalise with the biased one). It only touches the running variances, which training never
reads; ``test_batchnorm_running_statistics_match`` checks our variances against torch's batch
variances under flax's convention, and checks that torch's differ exactly by Bessel's factor.
Here, after two iterations, they differ by up to 9e-5 relative (G's first BN, n = 128).

Not exercised: torch's BCELoss clamps log(p) at -100, our losses take log_sigmoid of the logits,
so the two part only once sigmoid saturates (|logit| > ~17 in float32), far from these logits.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgan_jax import Discriminator, Generator, StepConfig, create_gan_state, make_train_step

torch = pytest.importorskip('torch')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments'))

import benchmark_train  # pylint: disable=g-import-not-at-top,wrong-import-position

IMAGE_SIZE, WIDTH, BATCH, LATENT = 16, 8, 8, 100
G = Generator(image_size=IMAGE_SIZE, channels=3, latent_dim=LATENT, width=WIDTH)
D = Discriminator(image_size=IMAGE_SIZE, channels=3, width=WIDTH)
STEP_KEYS = (1, 2)  # One rng per iteration; two iterations exercise Adam's bias correction.

# Largest difference relative to the tensor's largest entry. Measured (float32 step vs float64
# torch): ~1e-7 for losses and metrics, ~1e-6 for images, logits, gradients and statistics;
# 1e-4 leaves room for other CPUs' summation orders.
RTOL = 1e-4
# The optimizer create_gan_state builds (make_optimizer's defaults), and torch's Adam defaults.
LR, ADAM_B1, ADAM_B2, ADAM_EPS = 2e-4, 0.5, 0.999, 1e-8


# --- Layout conversion ----------------------------------------------------------------------------

def _to_torch(array, layout):
  """A flax-layout array in the torch layout of ``layout``."""
  array = np.asarray(array, np.float64)
  if layout == 'project':  # [nz, 4*4*F] -> [nz, F, 4, 4] (the model reshapes to [4, 4, F]).
    return array.reshape(array.shape[0], 4, 4, -1).transpose(0, 3, 1, 2)
  if layout == 'conv_transpose':  # [H, W, in, out] -> [in, out, H, W], spatially flipped.
    return array[::-1, ::-1].transpose(2, 3, 0, 1)
  if layout == 'conv':  # [H, W, in, out] -> [out, in, H, W].
    return array.transpose(3, 2, 0, 1)
  return array


def _to_flax(array, layout):
  """Inverse of :func:`_to_torch`."""
  array = np.asarray(array, np.float64)
  if layout == 'project':
    return array.transpose(0, 2, 3, 1).reshape(array.shape[0], -1)
  if layout == 'conv_transpose':
    return array.transpose(2, 3, 0, 1)[::-1, ::-1]
  if layout == 'conv':
    return array.transpose(2, 3, 1, 0)
  return array


def _entries(net, kind):
  """Pairs every flax variable of G (kind 'g') or D ('d') with its torch tensor.

  Returns:
    ``(params, stats)``: lists of ``(flax path, torch tensor, layout)``.
  """
  convs = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
  bns = [m for m in net if isinstance(m, torch.nn.BatchNorm2d)]
  if kind == 'g':
    names = ['project'] + [f'ConvTranspose_{i}' for i in range(len(convs) - 1)]
    layouts = ['project'] + ['conv_transpose'] * (len(convs) - 1)
  else:
    names = [f'Conv_{i}' for i in range(len(convs) - 1)] + ['logit']
    layouts = ['conv'] * len(convs)
  params = [((n, 'kernel'), m.weight, l) for n, m, l in zip(names, convs, layouts)]
  stats = []
  for i, bn in enumerate(bns):
    params += [((f'BatchNorm_{i}', 'scale'), bn.weight, 'vector'),
               ((f'BatchNorm_{i}', 'bias'), bn.bias, 'vector')]
    stats += [((f'BatchNorm_{i}', 'mean'), bn.running_mean, 'vector'),
              ((f'BatchNorm_{i}', 'var'), bn.running_var, 'vector')]
  return params, stats


def _load(entries, tree):
  """Copies a flax tree into the torch tensors of ``entries``."""
  with torch.no_grad():
    for (module, name), tensor, layout in entries:
      tensor.copy_(torch.from_numpy(_to_torch(tree[module][name], layout).copy()))


def _flax_tree(entries, get=lambda t: t):
  """A flax-layout nested dict of ``get(tensor)`` for every entry (numpy float64)."""
  tree = {}
  for (module, name), tensor, layout in entries:
    tree.setdefault(module, {})[name] = _to_flax(get(tensor).detach().numpy(), layout).copy()
  return tree


def _torch_models(state):
  """The reference models in float64 holding ``state``'s variables, plus their entries."""
  net_g, net_d = benchmark_train.torch_models(IMAGE_SIZE, WIDTH, nz=LATENT)
  net_g, net_d = net_g.double().train(), net_d.double().train()
  g_entries, d_entries = _entries(net_g, 'g'), _entries(net_d, 'd')
  for (params, stats), variables in [(g_entries, state.generator.variables),
                                     (d_entries, state.discriminator.variables)]:
    _load(params, variables['params'])
    _load(stats, variables['batch_stats'])
  return net_g, net_d, g_entries, d_entries


# --- Comparison -----------------------------------------------------------------------------------

def _max_rel_diff(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _assert_trees_close(ours, ref, what, rtol=RTOL):
  """Every leaf of the flax tree ``ours`` is within ``rtol`` (of its largest entry) of ``ref``."""
  assert set(ours) == set(ref), what
  for module in ours:
    assert set(ours[module]) == set(ref[module]), (what, module)
    for name in ours[module]:
      diff = _max_rel_diff(ours[module][name], ref[module][name])
      assert diff <= rtol, f'{what} {module}/{name}: max relative difference {diff:.2e}'


def _images(seed):
  return np.random.RandomState(seed).randint(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3),
                                             dtype=np.uint8)


def _torch_images(images):
  """uint8 NHWC -> [-1, 1] NCHW float64, the scaling ``images_to_model_range`` applies."""
  return torch.from_numpy(images.astype(np.float64) / 127.5 - 1.0).permute(0, 3, 1, 2)


def _latents(rng):
  """The z the step draws from ``rng`` (its first and only D update, ``fold_in(rng, 0)``)."""
  z_key, _ = jax.random.split(jax.random.fold_in(rng, 0))
  return np.asarray(jax.random.normal(z_key, (BATCH, LATENT)))


def _torch_z(z):
  return torch.from_numpy(z.astype(np.float64)).view(BATCH, LATENT, 1, 1)


# --- Fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope='module', autouse=True)
def torch_deterministic():
  """Deterministic torch kernels for this module only (a process-wide switch).

  The reference is then a fixed number on a given machine, so a failure is never torch's noise.
  """
  previous = torch.are_deterministic_algorithms_enabled()
  torch.use_deterministic_algorithms(True)
  yield
  torch.use_deterministic_algorithms(previous)


@pytest.fixture(scope='module')
def initial_state():
  # The weights only need to be some DCGAN initialisation; an 'rbg' key compiles the init in ~2 s
  # where the default threefry takes ~15 s on two CPU cores. The step's own rng stays threefry.
  return create_gan_state(jax.random.key(0, impl='rbg'), G, D)


@pytest.fixture(scope='module')
def jax_run(initial_state):
  """The states and metrics after each of the JAX step's iterations."""
  step = jax.jit(make_train_step(G, D, StepConfig()))
  state, results = initial_state, []
  for i, seed in enumerate(STEP_KEYS):
    state, metrics = step(state, _images(i), jax.random.key(seed))
    results.append((state, {k: float(v) for k, v in metrics.items()}))
  return results


def _bn_recorder(net):
  """Records what every train-mode BatchNorm of ``net`` averages into its running statistics.

  Returns:
    ``{flax module name: [(biased batch variance, elements per channel), ...]}``, one entry per
    forward pass, filled as the net runs.
  """
  records = {}

  def hook(name, module, inputs):
    if module.training:
      x = inputs[0].detach()
      records[name].append((x.var(dim=(0, 2, 3), unbiased=False).numpy(), x.numel() // x.shape[1]))

  bns = [m for m in net if isinstance(m, torch.nn.BatchNorm2d)]
  for i, bn in enumerate(bns):  # The order _entries names them in.
    records[f'BatchNorm_{i}'] = []
    bn.register_forward_pre_hook(lambda m, inputs, name=f'BatchNorm_{i}': hook(name, m, inputs))
  return records


@pytest.fixture(scope='module')
def torch_run(initial_state):
  """The pytorch/examples iteration (``benchmark_train.bench_torch``'s loop) on the same inputs.

  Returns:
    ``(per_iteration, bn_records)``: after each iteration, the metrics and flax-layout copies of
    params, statistics and Adam moments of G ('g') and D ('d'); and each net's
    :func:`_bn_recorder` records.
  """
  net_g, net_d, g_entries, d_entries = _torch_models(initial_state)
  records = {'g': _bn_recorder(net_g), 'd': _bn_recorder(net_d)}
  criterion = torch.nn.BCELoss()
  opt_d = torch.optim.Adam(net_d.parameters(), lr=LR, betas=(ADAM_B1, ADAM_B2), eps=ADAM_EPS)
  opt_g = torch.optim.Adam(net_g.parameters(), lr=LR, betas=(ADAM_B1, ADAM_B2), eps=ADAM_EPS)
  per_iteration = []
  for i, seed in enumerate(STEP_KEYS):
    real = _torch_images(_images(i))
    noise = _torch_z(_latents(jax.random.key(seed)))
    net_d.zero_grad()
    label = torch.full((BATCH,), 1.0, dtype=torch.float64)
    output = net_d(real).view(-1)
    err_d_real = criterion(output, label)
    err_d_real.backward()
    d_x = output.mean().item()
    fake = net_g(noise)
    label.fill_(0.0)
    output = net_d(fake.detach()).view(-1)
    err_d_fake = criterion(output, label)
    err_d_fake.backward()
    d_g_z1 = output.mean().item()
    opt_d.step()
    net_g.zero_grad()
    label.fill_(1.0)
    output = net_d(fake).view(-1)  # The updated D, in training mode (its statistics move).
    err_g = criterion(output, label)
    err_g.backward()
    d_g_z2 = output.mean().item()
    opt_g.step()
    metrics = {'d_loss': (err_d_real + err_d_fake).item(), 'g_loss': err_g.item(), 'd_real': d_x,
               'd_fake_before': d_g_z1, 'd_fake_after': d_g_z2}
    snapshot = {'metrics': metrics}
    for net_name, (params, stats), opt in [('g', g_entries, opt_g), ('d', d_entries, opt_d)]:
      snapshot[net_name] = {
          'params': _flax_tree(params), 'batch_stats': _flax_tree(stats),
          'mu': _flax_tree(params, lambda t, o=opt: o.state[t]['exp_avg']),
          'nu': _flax_tree(params, lambda t, o=opt: o.state[t]['exp_avg_sq'])}
    per_iteration.append(snapshot)
  return per_iteration, records


def _adam_moments(train_state):
  adam = train_state.opt_state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate).
  return adam.mu, adam.nu


def _np(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


# --- Tests ----------------------------------------------------------------------------------------

def test_forward_passes_match(initial_state):
  # Train-mode forwards (batch statistics) of G, of D on G's images and of D on real images: the
  # layout conversion itself, before any update is involved.
  net_g, net_d, g_entries, d_entries = _torch_models(initial_state)
  z = _latents(jax.random.key(STEP_KEYS[0]))
  real = _images(0)

  @jax.jit
  def forward(state, z, real):
    fake, g_updates = G.apply(state.generator.variables, z, train=True, mutable=['batch_stats'])
    d_params = state.discriminator.params
    fake_logits, d_updates = D.apply(state.discriminator.variables, fake, train=True,
                                     mutable=['batch_stats'])
    # Chained statistics, as torch's D moves its running statistics on both passes.
    real_logits, d_updates = D.apply({'params': d_params, **d_updates},
                                     real.astype(jnp.float32) / 127.5 - 1.0, train=True,
                                     mutable=['batch_stats'])
    return fake, fake_logits, real_logits, g_updates['batch_stats'], d_updates['batch_stats']

  fake, fake_logits, real_logits, g_stats, d_stats = _np(forward(initial_state, z, real))
  with torch.no_grad():
    torch_fake = net_g(_torch_z(z))
    torch_fake_logits = net_d[:-1](torch_fake).view(-1)  # [:-1] leaves out the Sigmoid.
    torch_real_logits = net_d[:-1](_torch_images(real)).view(-1)
  assert _max_rel_diff(fake, torch_fake.permute(0, 2, 3, 1).numpy()) <= RTOL
  assert _max_rel_diff(fake_logits, torch_fake_logits.numpy()) <= RTOL
  assert _max_rel_diff(real_logits, torch_real_logits.numpy()) <= RTOL
  # One BN update each: the running means agree as they are; see the module docstring for var.
  torch_g_stats, torch_d_stats = _flax_tree(g_entries[1]), _flax_tree(d_entries[1])
  for ours, ref in [(g_stats, torch_g_stats), (d_stats, torch_d_stats)]:
    for module in ours:
      assert _max_rel_diff(ours[module]['mean'], ref[module]['mean']) <= RTOL, module


def test_inference_mode_forward_passes_match(initial_state):
  # train=False (running statistics): what `sample`, `evaluate` and the sample grids run. The
  # running statistics and BatchNorm affine maps are made non-trivial (at initialisation they
  # are (0, 1) and (1, 0), which would hide a mixed-up mean/var or scale/bias). Both sides use
  # the same statistics, so Bessel's factor (module docstring) does not enter.
  rng = np.random.default_rng(7)

  def perturbed(variables):
    params = {k: dict(v) for k, v in variables['params'].items()}
    stats = {}
    for name, s in variables['batch_stats'].items():
      shape = s['mean'].shape
      stats[name] = {'mean': rng.normal(0.0, 0.3, shape).astype(np.float32),
                     'var': rng.uniform(0.3, 3.0, shape).astype(np.float32)}
      params[name] = {'scale': np.asarray(params[name]['scale']) + rng.normal(0.0, 0.2, shape),
                      'bias': rng.normal(0.0, 0.2, shape)}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    return {'params': params, 'batch_stats': jax.tree.map(jnp.asarray, stats)}

  g_vars = perturbed(initial_state.generator.variables)
  d_vars = perturbed(initial_state.discriminator.variables)
  net_g, net_d = benchmark_train.torch_models(IMAGE_SIZE, WIDTH, nz=LATENT)
  net_g, net_d = net_g.double().eval(), net_d.double().eval()
  for net, kind, variables in [(net_g, 'g', g_vars), (net_d, 'd', d_vars)]:
    params, stats = _entries(net, kind)
    _load(params, variables['params'])
    _load(stats, variables['batch_stats'])
  z = _latents(jax.random.key(STEP_KEYS[0]))
  real = _images(0)
  fake = np.asarray(jax.jit(lambda v, z: G.apply(v, z, train=False))(g_vars, z))
  logits = np.asarray(jax.jit(lambda v, x: D.apply(v, x.astype(jnp.float32) / 127.5 - 1.0,
                                                   train=False))(d_vars, real))
  with torch.no_grad():
    torch_fake = net_g(_torch_z(z)).permute(0, 2, 3, 1).numpy()
    torch_logits = net_d[:-1](_torch_images(real)).view(-1).numpy()
  assert _max_rel_diff(fake, torch_fake) <= RTOL
  assert _max_rel_diff(logits, torch_logits) <= RTOL


@pytest.mark.parametrize('iteration', range(len(STEP_KEYS)))
def test_losses_and_metrics_match(jax_run, torch_run, iteration):
  _, metrics = jax_run[iteration]
  ref = torch_run[0][iteration]['metrics']
  # d_real is D(x) before the D update, d_fake_before D(G(z)) on the same pass, d_fake_after
  # D(G(z)) through the updated D in the G step: torch's D_x, D_G_z1 and D_G_z2.
  for key, value in ref.items():
    assert metrics[key] == pytest.approx(value, rel=RTOL), key


@pytest.mark.parametrize('iteration', range(len(STEP_KEYS)))
def test_gradients_match(jax_run, torch_run, iteration):
  # Adam's moments hold the gradients: after one step mu = (1 - b1) g and nu = (1 - b2) g^2,
  # after two they mix both iterations' gradients; torch's exp_avg/exp_avg_sq are the same sums.
  state, _ = jax_run[iteration]
  ref = torch_run[0][iteration]
  for name, train_state in [('g', state.generator), ('d', state.discriminator)]:
    mu, nu = _np(_adam_moments(train_state))
    _assert_trees_close(mu, ref[name]['mu'], f'{name} iteration {iteration} Adam mu')
    _assert_trees_close(nu, ref[name]['nu'], f'{name} iteration {iteration} Adam nu')


def _adam_step_tolerance(nu, steps):
  """Elementwise bound on how far float32 gradient noise may move one of our Adam steps.

  Adam steps by ``lr * m_hat / (sqrt(v_hat) + eps)``, about lr per entry whatever the gradient's
  size. So where a gradient is tiny (``sqrt(v_hat)`` near eps; the latent projection has entries
  at 1e-6 of the largest) a gradient error delta moves the step by up to
  ``lr * delta / (sqrt(v_hat) + eps)``, up to 2 lr: float32 noise, not a different update.
  delta is what ``test_gradients_match`` allows, RTOL times the leaf's largest gradient; the
  well-conditioned entries get 1e-3 lr.

  Args:
    nu: Torch's second moments after the step (flax-layout tree).
    steps: Adam steps taken, for the bias correction.
  """
  def bound(v):
    root = np.sqrt(v / (1.0 - ADAM_B2**steps))
    return LR * np.minimum(1e-3 + RTOL * root.max() / (root + ADAM_EPS), 2.0)
  return jax.tree.map(bound, nu)


@pytest.mark.parametrize('iteration', range(len(STEP_KEYS)))
def test_updated_params_match(jax_run, torch_run, iteration):
  # Entrywise: a relative-to-the-largest check cannot see a wrong update of a BN scale (~1) by lr.
  state, _ = jax_run[iteration]
  per_iteration = torch_run[0]
  for name, ours in [('g', state.generator), ('d', state.discriminator)]:
    params, ref = _np(ours.params), per_iteration[iteration][name]['params']
    # Step errors add up over the iterations; 1e-6 of the largest entry covers float32 rounding.
    tolerance = jax.tree.map(lambda *t: sum(t), *[
        _adam_step_tolerance(per_iteration[t][name]['nu'], t + 1) for t in range(iteration + 1)])
    for module in ref:
      for leaf in ref[module]:
        diff = np.abs(params[module][leaf] - ref[module][leaf])
        allowed = tolerance[module][leaf] + 1e-6 * np.max(np.abs(ref[module][leaf]))
        worst = float(np.max(diff / allowed))
        assert worst <= 1.0, (f'{name} iteration {iteration} {module}/{leaf}: '
                              f'{worst:.2f} of the tolerance')


def _running_var(v0, records, bessel):
  """Running variance after BN updates with the recorded batch variances, torch's way if bessel."""
  v = np.asarray(v0, np.float64)
  for batch_var, n in records:
    v = 0.9 * v + 0.1 * (batch_var * n / (n - 1) if bessel else batch_var)
  return v


def test_batchnorm_running_statistics_match(initial_state, jax_run, torch_run):
  per_iteration, records = torch_run
  state, _ = jax_run[-1]
  # G's BNs update once per iteration; D's three times (real, fake for D, fake for G).
  for name, ours, before, updates in [
      ('g', state.generator, initial_state.generator, 1),
      ('d', state.discriminator, initial_state.discriminator, 3)]:
    stats, before = _np(ours.batch_stats), _np(before.batch_stats)
    ref = per_iteration[-1][name]['batch_stats']
    assert set(stats) == set(ref) == set(records[name])
    for module in stats:
      where = f'{name} {module}'
      bn_records = records[name][module]
      assert len(bn_records) == updates * len(STEP_KEYS), where
      assert _max_rel_diff(stats[module]['mean'], ref[module]['mean']) <= RTOL, where
      # torch's running variance averages the unbiased batch variances (the recording is right)
      np.testing.assert_allclose(ref[module]['var'],
                                 _running_var(before[module]['var'], bn_records, bessel=True),
                                 rtol=1e-10, err_msg=where)
      # ... ours the biased ones, flax's convention.
      biased = _running_var(before[module]['var'], bn_records, bessel=False)
      assert _max_rel_diff(stats[module]['var'], biased) <= RTOL, where
