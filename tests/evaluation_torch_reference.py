"""PyTorch references for the evaluation tests: pytorch-fid's FID Inception with random weights.

pytorch-fid's `fid_inception_v3()` downloads the real weights, which tests must never do, so
`build_fid_inception` repeats its construction (torchvision's Inception3 with 1008 classes, no
aux head, and pytorch-fid's own FIDInceptionA/C/E_1/E_2 blocks) but keeps a random
initialisation. BatchNorm running statistics are then estimated from random images so that they
are non-trivial and the activations stay O(1) through all 94 layers, and the BN affine
parameters are randomised. Imported only by tests that already skipped without torch.
"""
import unittest.mock

import numpy as np
import torch
from pytorch_fid import inception as pytorch_fid_inception


def build_fid_inception(seed: int = 0) -> torch.nn.Module:
  """pytorch-fid's FID Inception-v3 with random weights and calibrated BN stats, in eval mode."""
  torch.manual_seed(seed)
  fid = pytorch_fid_inception
  # pylint: disable-next=protected-access
  net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = fid.FIDInceptionE_1(1280)
  net.Mixed_7c = fid.FIDInceptionE_2(2048)
  batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    # Random affine parameters first, then running stats measured under them, so that the
    # activations stay O(1) through all layers.
    for bn in batch_norms:
      bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
      bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator) * 0.2 + 0.1)
      bn.reset_running_stats()
      bn.momentum = None  # Cumulative average: one pass sets the batch's statistics.
    net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=generator))
    # Calibrate at the network's real input size on a smooth (upsampled) and a noisy image,
    # like the test inputs; statistics taken at smaller sizes do not carry over.
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 48, 48, generator=generator),
                                             size=(299, 299), mode='bilinear')
    noisy = torch.rand(1, 3, 299, 299, generator=generator)
    net.train()
    net(torch.cat([smooth, noisy]) * 2 - 1)
  return net.eval()


def pytorch_fid_wrapper(net: torch.nn.Module) -> torch.nn.Module:
  """pytorch-fid's own `InceptionV3` feature wrapper (resize + normalise) around `net`."""
  with unittest.mock.patch.object(pytorch_fid_inception, 'fid_inception_v3', lambda: net):
    return pytorch_fid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()


def reference_outputs(net: torch.nn.Module, images_uint8_nhwc: np.ndarray) -> dict[str, np.ndarray]:
  """pytorch-fid's path: x/255 -> InceptionV3 wrapper -> pool; fc for logits (with/without bias)."""
  wrapper = pytorch_fid_wrapper(net)
  x = torch.from_numpy(images_uint8_nhwc.astype(np.float32) / 255).permute(0, 3, 1, 2)
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  with torch.no_grad():
    pool = wrapper(x)[0].flatten(1)
    logits = pool @ net.fc.weight.T
    logits_with_bias = net.fc(pool)
  return {'pool': pool.numpy(), 'logits': logits.numpy(),
          'logits_with_bias': logits_with_bias.numpy()}


def network_outputs(net: torch.nn.Module, inputs_nhwc: np.ndarray) -> dict[str, np.ndarray]:
  """The bare network on already preprocessed [N, H, W, 3] float inputs."""
  wrapper = pytorch_fid_wrapper(net)
  x = torch.from_numpy(np.array(inputs_nhwc, np.float32)).permute(0, 3, 1, 2)
  with torch.no_grad():
    for block in wrapper.blocks:
      x = block(x)
    pool = x.flatten(1)
    logits = pool @ net.fc.weight.T
  return {'pool': pool.numpy(), 'logits': logits.numpy()}
