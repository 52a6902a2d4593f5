"""Our Flax FID Inception + extractor against pytorch-fid's own network, on 8 CPU devices.

pytorch-fid's FID Inception (its FIDInception* blocks, random weights, calibrated non-trivial BN
statistics) is saved as a .pth, read by our torch-free loader and run by our jitted, sharded
extractor at 'highest' precision. Every image goes through the network at 299x299 whatever its
size, so one compiled program (batch 8, one image per device) serves all cases; the inputs are
kept few because Inception costs about 6 GFLOP per image on CPU.
"""
import numpy as np
import pytest

from dcgan_jax import evaluation

torch = pytest.importorskip('torch')
pytest.importorskip('torchvision')
pytest.importorskip('pytorch_fid')
# pylint: disable-next=wrong-import-position
import evaluation_torch_reference as reference

BATCH_SIZE = 8


def _images(n, size, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def _assert_close(ours, expected, what):
  """Agreement within 1e-4 relative to the output's scale."""
  scale = np.abs(expected).max()
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


@pytest.mark.slow
def test_matches_pytorch_fid_inception(tmp_path):
  # One test rather than several so that pytest-xdist cannot split it over workers, each of
  # which would rebuild the reference and recompile Inception.
  torch_net = reference.build_fid_inception(seed=0)
  path = tmp_path / 'random_fid_inception.pth'
  torch.save(torch_net.state_dict(), path)
  extractor = evaluation.InceptionExtractor.from_file(
      path, preprocessing='pytorch_fid', precision='highest', batch_size=BATCH_SIZE)
  assert extractor.num_devices == 8  # tests/conftest.py's fake CPU devices.
  fc_bias = torch_net.fc.bias.detach().numpy()

  cases = [(9, 32, 3),   # Two batches: the second holds 1 image and 7 padding rows.
           (3, 64, 1),   # Grayscale, replicated to RGB.
           (2, 299, 3)]  # Native size.
  for n, size, channels in cases:
    images = _images(n, size, channels, seed=size)
    ours = extractor(images)
    expected = reference.reference_outputs(torch_net, images)
    assert ours['pool'].shape == (n, 2048) and ours['pool'].dtype == np.float32
    assert ours['logits'].shape == (n, 1008) and ours['logits'].dtype == np.float32
    for key in ('pool', 'logits', 'logits_with_bias'):
      _assert_close(ours[key], expected[key], f'{key} for {n} images of {size}px')
    # Distinct images give clearly distinct features, so the agreement means something.
    pool = ours['pool']
    assert np.abs(pool[0] - pool[1]).max() > 1e-2 * np.abs(pool).max()
    # The bias really is left out of 'logits' (the Inception Score needs it so).
    np.testing.assert_allclose(ours['logits_with_bias'] - ours['logits'],
                               np.broadcast_to(fc_bias, (n, 1008)), atol=1e-3)

  # 'tf' mode feeds the same (already compiled) network with TF1-resized inputs; the resize
  # itself is checked against TensorFlow in test_evaluation_preprocessing.
  tf_extractor = evaluation.InceptionExtractor.from_file(
      path, preprocessing='tf', precision='highest', batch_size=BATCH_SIZE)
  images = _images(3, 32, seed=7)
  ours = tf_extractor(images)
  expected = reference.network_outputs(torch_net, np.asarray(evaluation.preprocess(images, 'tf')))
  for key in ('pool', 'logits'):
    _assert_close(ours[key], expected[key], f'{key} in tf mode')
