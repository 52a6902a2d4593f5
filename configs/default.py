r"""Default config: the embedded `digits` dataset at 32x32, small enough for 2 CPU cores.

Run it with:

  python -m dcgan_jax.main --config=configs/default.py --workdir=/tmp/dcgan_digits

Other configs import this one and override a few fields; every field is documented here.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration."""
  config = ml_collections.ConfigDict()
  # Every random stream derives from it: initialisation, each step's key (latents, penalties,
  # augmentation), the data order, the sample grids' and scores' latents. The same seed and
  # command on the same devices train bit-identically. A resume keeps the checkpoint's step key,
  # so changing seed there changes only the data order and the grids' latents from then on.
  config.seed = 0

  # --- Data -------------------------------------------------------------------------------------
  # 'digits' (embedded, offline), any tfds image dataset name ('mnist', 'cifar10', 'celeb_a', ...),
  # 'folder' (a directory or .zip of images given by dataset_path) or 'array' (a .npy of uint8
  # images, or a .npz with 'images' and optional 'labels', given by dataset_path).
  config.dataset = 'digits'
  config.data_dir = ''  # tfds data_dir; '' means tfds' default (~/tensorflow_datasets).
  # For 'folder': the directory or .zip. For 'array': the .npy or .npz file. For 'celeb_a':
  # optional hand-downloaded img_align_celeba.zip or its extracted folder (used instead of tfds'
  # broken download).
  config.dataset_path = ''
  config.split = 'train'
  config.image_size = 32  # Must be 4*2^k: 8, 16, 32, 64, 128 or 256.
  config.channels = 1  # Images are converted to this many channels (1 grey, 3 RGB).
  config.crop_size = 0  # Center crop before resizing; 0 means the largest centred square.
  config.shuffle_buffer_size = 10_000
  # Keep the whole prepared dataset on the accelerators and draw batches there:
  # 'auto' (when it fits in device_resident_max_bytes), 'always' or 'never'.
  config.device_resident = 'auto'
  config.device_resident_max_bytes = 4 * 1024**3

  # --- Model ------------------------------------------------------------------------------------
  config.latent_dim = 100
  # Widths 16 (the paper's 64 is 16x the compute) keep the default run to a few minutes on two
  # CPU cores; the digits need no more.
  config.generator_width = 16  # ngf in the reference: width of G's last hidden block.
  config.discriminator_width = 16  # ndf: width of D's first block.
  # How D normalises its hidden layers: 'batch' (the paper), 'layer' (per example, so that a
  # gradient penalty sees each example alone: WGAN-GP's critic), 'spectral' (every layer's
  # kernel divided by its largest singular value, SNGAN; often with loss='hinge') or 'none'.
  config.discriminator_norm = 'batch'
  # 'transpose' (the paper) or 'resize_conv' (nearest x2 then 3x3 conv: no checkerboard, and
  # about half the FLOPs of XLA's dilated transposed convolution on CPU).
  config.upsample = 'resize_conv'
  config.output_activation = 'tanh'  # 'tanh' for data in [-1, 1], 'sigmoid' for [0, 1].
  config.dtype = 'float32'  # Computation dtype: 'float32' or 'bfloat16'; params stay float32.
  # Zero-pad the image channels inside D's first and G's last (transposed) convolution to a
  # multiple of this: 8 gives cuDNN's bfloat16 tensor-core kernels the channel counts they want
  # instead of letting them pad an RGB tensor with separate kernels. Same parameters and
  # function (checkpoints carry over either way); 1 pads nothing; 0 picks 8 for bfloat16 and 1
  # for float32, the faster of each on an H200 (experiments/PERF.md, version 11).
  config.image_channel_multiple = 0
  # Class-conditional training: 0 (the paper) for none, else the dataset's number of classes
  # (digits, mnist, cifar10: 10). G then takes a label beside z, D adds a projection of its
  # features on a learned class embedding (Miyato & Koyama 2018); samples, quality scores and
  # FID cycle through the classes, one grid column per class.
  config.num_classes = 0
  # How G takes the label: 'concat' (its one-hot code appended to z), 'batchnorm' (every
  # BatchNorm of G takes its scale and offset from the label: class-conditional BatchNorm, the
  # generator of the projection-discriminator paper; slow to learn the classes in short runs)
  # or 'concat_batchnorm' (both, as BigGAN-deep). Other values than 'concat' need num_classes.
  config.generator_conditioning = 'concat'

  # --- Objective --------------------------------------------------------------------------------
  # 'non_saturating', 'minimax', 'hinge', 'least_squares' or 'wasserstein', or a name given to
  # dcgan_jax.register_loss in the process that calls dcgan_jax.train.train_and_evaluate.
  config.loss = 'non_saturating'
  config.real_label = 1.0  # One-sided label smoothing: e.g. 0.9 (not with 'wasserstein').
  config.gradient_penalty_weight = 0.0  # WGAN-GP lambda (10 in the paper); 0 disables.
  config.r1_weight = 0.0  # R1 gamma; 0 disables.
  config.d_steps = 1  # Discriminator updates per generator update.
  # DiffAugment (Zhao et al. 2020) for small datasets: transform every image D sees, real and
  # fake, in D's and G's updates, differentiably: a comma-separated subset of
  # 'color,translation,cutout' (the paper's full policy), or '' for none (the DCGAN paper).
  # ADA's groups may be named too: 'blit' (flips, quarter turns, whole-pixel shifts), 'geom'
  # (scaling, rotation, sub-pixel shifts), 'ada_color' (brightness, contrast, luma flip, hue,
  # saturation), 'filter' (frequency bands scaled), 'noise' (additive Gaussian); 'bgc' is the
  # first three, ADA's recommended pipeline (with ada_target below), 'bgcfnc' all with cutout.
  config.augment = ''
  # Apply each transformation to each image with this probability (1: always, DiffAugment).
  config.augment_probability = 1.0
  # Adaptive augmentation (ADA, Karras et al. 2020): > 0 (the paper: 0.6) replaces the fixed
  # probability by one that starts at 0, rises while E[sign(D(real))] exceeds this target (D
  # overfits) and falls otherwise, by up to 1 per ada_speed_images real images. Needs augment.
  config.ada_target = 0.0
  config.ada_speed_images = 500_000

  # --- Optimisation -----------------------------------------------------------------------------
  config.batch_size = 64  # Global batch over all devices and processes.
  config.g_learning_rate = 2e-4
  config.d_learning_rate = 2e-4  # Differs from g_learning_rate for TTUR.
  config.adam_b1 = 0.5
  config.adam_b2 = 0.999
  config.lr_schedule = 'constant'  # 'constant', 'cosine' or 'linear' decay to 0.
  config.warmup_steps = 0
  # EMA of G's params and stats, used for samples and quality; 0 disables. Its horizon is about
  # 1 / (1 - decay) steps: 0.99 suits this ~850-step run (0.999 would still be mostly the
  # random init at the end); long runs (CelebA) use 0.999.
  config.ema_decay = 0.99

  # --- Duration ---------------------------------------------------------------------------------
  # Every '<name>_steps' field counts generator updates; 0 disables a periodic hook, and -1 means
  # "derive it from '<name>_epochs' and the dataset size" (num_train_steps: from num_epochs).
  # Checkpoints, samples and quality are also produced at the end of the run.
  config.num_train_steps = -1
  config.num_epochs = 30.0  # 843 steps of 64 over the 1,797 digits.
  config.log_every_steps = 50
  config.log_every_epochs = 0.0
  config.checkpoint_every_steps = 500
  config.checkpoint_every_epochs = 0.0
  config.keep_checkpoints = 3
  # Periodic checkpoints are saved by a worker thread from a device copy of the state, so
  # training goes on meanwhile (the copy needs the state's size once more in device memory).
  # Single-process shard_map runs only; pmap and multi-process runs save in the loop.
  config.background_checkpoints = True
  config.sample_every_steps = 250
  config.sample_every_epochs = 0.0
  config.num_sample_images = 64  # Fixed noise batch of the sample grids (samples/step_*.png).
  config.quality_every_steps = 250  # Digits quality score (only for dataset='digits'); 0 disables.
  config.quality_every_epochs = 0.0
  config.num_quality_samples = 1000  # Generated digits scored each time.
  config.quality_cache_dir = ''  # Cached digits classifier; '' means $XDG_CACHE_HOME/dcgan_jax
  # (~/.cache/dcgan_jax where XDG_CACHE_HOME is unset).

  # --- Evaluation (FID / IS / KID) --------------------------------------------------------------
  config.inception_weights = ''  # Path to pt_inception-2015-12-05-6726825d.pth or .npz.
  config.eval_every_steps = 0  # 0 disables in-training FID.
  config.eval_every_epochs = 0.0
  config.eval_num_samples = 5000
  config.eval_preprocessing = 'pytorch_fid'  # 'pytorch_fid' or 'tf' (TTUR / torch-fidelity).
  # Also log precision, recall, density and coverage (k=3) on the same Inception features.
  config.eval_precision_recall = True

  # --- Parallelism ------------------------------------------------------------------------------
  config.parallelism = 'shard_map'  # 'shard_map' (jit over a 1-D mesh) or 'pmap'.
  # With device-resident data and shard_map, up to this many steps run in one device program
  # (a loop on the device; chunks still end at every log, checkpoint, hook and epoch end, so
  # these fall at the same steps; the numbers agree with per-step dispatch to rounding, not bit
  # for bit). 1 (default) dispatches each step from Python as one
  # program. More saves host dispatch work (for TPUs and fast GPUs), but measure. On CPU keep 1:
  # XLA:CPU gives its fast convolution kernels only to convolutions outside loops, so a fused
  # step runs 20-30x slower than a lone one (this config on 2 cores: ~1 s vs 30-50 ms per step).
  config.steps_per_dispatch = 1

  # --- Profiling ----------------------------------------------------------------------------------
  # Trace this many training steps with jax.profiler into <workdir>/profile (TensorBoard's profile
  # plugin, or perfetto_trace.json.gz in ui.perfetto.dev); 0 disables. The trace starts after
  # profile_skip_steps steps of the process, so compilation and warm-up stay out of it.
  config.profile_steps = 0
  config.profile_skip_steps = 10
  return config
