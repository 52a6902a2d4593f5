"""FID, Inception Score and KID in JAX, agreeing with pytorch-fid and torch-fidelity.

Weights
-------
All reference implementations use one network, TensorFlow's "inception-2015-12-05" graph. We
read pytorch-fid's port of it, `pt_inception-2015-12-05-6726825d.pth`, directly (no torch
needed, and nothing in the pickle is executed: only tensors are accepted), or a `.npz` copy:

  # Either download by hand:
  #   https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  # or let the helper fetch and verify it into ~/.cache/dcgan_jax ($XDG_CACHE_HOME/dcgan_jax):
  python -m dcgan_jax.evaluation.download_weights [--to_npz inception.npz]

The SHA-256 is checked whenever the file name carries its prefix (`...-6726825d.pth`), and every
tensor is mapped by name and checked against the model's shapes.

Use
---
  from dcgan_jax import evaluation

  extractor = evaluation.InceptionExtractor.from_file(
      'pt_inception-2015-12-05-6726825d.pth', preprocessing='pytorch_fid')
  real, fake = evaluation.FeatureStatistics(), evaluation.FeatureStatistics()
  real_features = []
  for batch in real_batches:            # uint8 [N, H, W, 1 or 3], any size
    real_features.append(extractor(batch)['pool'])
    real.update(real_features[-1])
  real_features = np.concatenate(real_features)  # Or keep the first 10k for KID, precision...
  out = extractor(evaluation.to_uint8(generated))   # generated floats in [-1, 1]
  fake.update(out['pool'])
  fake_features, fake_logits = out['pool'], out['logits']
  # Or keep generated images and features on the device (no host copies, statistics summed
  # on the device; what the evaluate CLI and in-training FID do), collecting what IS, KID and
  # precision/recall read from every batch:
  outs = list(extractor.device_batches(evaluation.to_uint8_jax(generated_on_device)))
  for out in outs:
    fake.update(out['pool'])
  fake_features = np.concatenate([np.asarray(out['pool']) for out in outs])
  fake_logits = np.concatenate([np.asarray(out['logits']) for out in outs])

  fid = evaluation.frechet_distance(real, fake)  # Or (mu1, sigma1, mu2, sigma2), as pytorch-fid
  is_mean, is_std = evaluation.inception_score(fake_logits)
  kid_mean, kid_std = evaluation.kernel_inception_distance(real_features, fake_features)
  scores = evaluation.manifold_metrics(real_features, fake_features)  # precision, recall, ...
  real.save('reference_stats.npz')      # `mu`/`sigma`, readable by pytorch-fid

Protocol choices (report them with every number)
------------------------------------------------
* preprocessing='pytorch_fid' (default): x/255, PyTorch bilinear resize to 299, 2x-1; matches
  pytorch-fid. preprocessing='tf': TF1 bilinear resize, (x-128)/128; matches the original TTUR
  code, torch-fidelity and torchmetrics. The two differ noticeably on small images.
* precision='default' lets GPUs use TF32 convolutions (what PyTorch does by default);
  'highest' computes in full float32 (used by the parity tests).
* FID needs more than 2048 samples (a warning says so) and is comparable only at equal sample
  counts; 50,000 is the standard. IS: 10 splits, no shuffling, bias-free logits. KID: 100
  subsets of 1000, cubic polynomial kernel, unbiased estimator (torch-fidelity's defaults).
* Precision / recall (Kynkäänniemi et al.) and density / coverage (Naeem et al.): k = 3, on the
  Inception pool_3 features (the papers use VGG-16 features, so compare like with like only).
* Means and covariances are accumulated in float64 (device-resident features: float32 products
  of shifted features at HIGHEST precision, summed error-free on the device, folded into
  float64 once; agrees to ~1e-7 to 1e-6 relative); the Fréchet distance uses two symmetric
  eigendecompositions in float64 (under `jax.enable_x64` locally; global settings are untouched).
"""
from dcgan_jax.evaluation.extractor import InceptionExtractor
from dcgan_jax.evaluation import manifold
from dcgan_jax.evaluation.inception import FIDInceptionV3
from dcgan_jax.evaluation.manifold import manifold_metrics
from dcgan_jax.evaluation.preprocessing import preprocess
from dcgan_jax.evaluation.preprocessing import to_uint8
from dcgan_jax.evaluation.preprocessing import to_uint8_jax
from dcgan_jax.evaluation.statistics import FeatureStatistics
from dcgan_jax.evaluation.statistics import allgather_rows
from dcgan_jax.evaluation.statistics import allgather_statistics
from dcgan_jax.evaluation.statistics import frechet_distance
from dcgan_jax.evaluation.statistics import frechet_distance_jax
from dcgan_jax.evaluation.statistics import inception_score
from dcgan_jax.evaluation.statistics import kernel_inception_distance
from dcgan_jax.evaluation.statistics import process_share
from dcgan_jax.evaluation.weights import PYTORCH_FID_WEIGHTS_URL
from dcgan_jax.evaluation.weights import download_inception_weights
from dcgan_jax.evaluation.weights import load_inception_variables

__all__ = [
    'FIDInceptionV3',
    'FeatureStatistics',
    'InceptionExtractor',
    'PYTORCH_FID_WEIGHTS_URL',
    'allgather_rows',
    'allgather_statistics',
    'download_inception_weights',
    'frechet_distance',
    'frechet_distance_jax',
    'inception_score',
    'kernel_inception_distance',
    'load_inception_variables',
    'manifold',
    'manifold_metrics',
    'preprocess',
    'process_share',
    'to_uint8',
    'to_uint8_jax',
]
