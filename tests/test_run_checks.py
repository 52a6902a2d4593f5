"""Tests of dcgan_jax.durations and dcgan_jax.run_checks: pure functions of the config.

Steps from epochs, the shipped configs' validity, the resume checks (models of another shape,
what changed and what that does), and the warnings for settings that are valid but probably not
meant. No data is read and nothing is trained.
"""
import json

import pytest

from dcgan_jax import durations as durations_lib
from dcgan_jax import run_checks
from dcgan_jax.errors import UserError
from tiny_configs import load_config, tiny_config


# ---- durations ------------------------------------------------------------------------------


def test_durations_from_epochs_and_steps(tmp_path):
  config = tiny_config(tmp_path, batch_size=100, num_train_steps=-1, num_epochs=2.5,
                       checkpoint_every_steps=-1, checkpoint_every_epochs=1.0,
                       sample_every_steps=7, quality_every_steps=0)
  durations = durations_lib.resolve_durations(config, num_examples=1000)
  assert durations.steps_per_epoch == 10
  assert durations.num_train_steps == 25
  assert durations.checkpoint_every_steps == 10
  assert durations.sample_every_steps == 7
  assert durations.quality_every_steps == 0
  config.num_train_steps = 3  # Steps win over epochs.
  assert durations_lib.resolve_durations(config, num_examples=1000).num_train_steps == 3


@pytest.mark.parametrize('overrides,message', [
    ({'num_train_steps': -1, 'num_epochs': 0.0}, 'no steps'),
    ({'sample_every_steps': -2}, 'sample_every_steps'),
    ({'log_every_steps': -1, 'log_every_epochs': -1.0}, 'log_every_epochs'),
])
def test_bad_durations_are_user_errors(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    durations_lib.resolve_durations(tiny_config(tmp_path, **overrides), num_examples=100)


def test_a_length_in_epochs_counts_the_images_left_after_a_batch_size_change(tmp_path):
  """A run of 10 epochs of 1000 images stopped at step 100 of batch 64 (6,400 images) and resumed
  at batch 128 has 3,600 images left: 29 more steps. Converted at 128 alone it would end at step
  79, before its checkpoint, after 6.4 epochs."""
  config = tiny_config(tmp_path, batch_size=128, num_train_steps=-1, num_epochs=10.0)
  assert durations_lib.resolve_durations(config, 1000).num_train_steps == 79
  resumed = durations_lib.resolve_durations(config, 1000, resumed_at=(100, 6400))
  assert resumed.num_train_steps == 129
  # The same batch size throughout: the usual conversion, whatever the step.
  assert durations_lib.resolve_durations(config, 1000, resumed_at=(50, 6400)).num_train_steps == 79
  # Past the length already: nothing left to train.
  assert durations_lib.resolve_durations(config, 1000,
                                         resumed_at=(300, 12_000)).num_train_steps == 300
  # A length in steps is a length in steps.
  config.num_train_steps = 500
  resumed = durations_lib.resolve_durations(config, 1000, resumed_at=(100, 6400))
  assert resumed.num_train_steps == 500
  # An epoch count written as images / num_examples is not rounded up a step by float error.
  config.update(num_train_steps=-1, num_epochs=240 / 1797, batch_size=16)
  assert durations_lib.resolve_durations(config, 1797).num_train_steps == 15


def test_is_due():
  assert [s for s in range(1, 11) if durations_lib.is_due(s, 4)] == [4, 8]
  assert [s for s in range(1, 11) if durations_lib.is_due(s, 4, num_train_steps=10)] == [4, 8, 10]
  assert not any(durations_lib.is_due(s, 0) for s in range(1, 11))


# ---- the shipped configs ---------------------------------------------------------------------


@pytest.mark.parametrize('name', ['default', 'mnist', 'cifar10', 'celeba', 'folder'])
def test_every_config_is_valid_and_resolves_to_steps(name):
  config = load_config(name)
  run_checks.validate_config(config)  # 8 devices: every batch size must split over them.
  durations = durations_lib.resolve_durations(config, num_examples=10_000)
  assert durations.num_train_steps > 0 and durations.checkpoint_every_steps > 0


def test_a_shipped_config_copied_elsewhere_still_loads(tmp_path):
  """A sweep starts from a copy of configs/folder.py: it loaded default.py from beside itself
  and failed ("No config file at .../default.py")."""
  import shutil  # pylint: disable=g-import-not-at-top
  from dcgan_jax import config_files  # pylint: disable=g-import-not-at-top
  for name in ('mnist', 'cifar10', 'celeba', 'folder'):
    copy = tmp_path / f'my_{name}.py'
    shutil.copy(config_files.DEFAULT_CONFIG.replace('default.py', f'{name}.py'), copy)
    assert config_files.load_config(copy).to_dict() == load_config(name).to_dict()
  # A default.py beside the copy is the one it builds on.
  (tmp_path / 'default.py').write_text(
      'from dcgan_jax import config_files\n\n\ndef get_config():\n'
      '  config = config_files.load_config(config_files.DEFAULT_CONFIG)\n'
      '  config.seed = 42\n  return config\n')
  assert config_files.load_config(tmp_path / 'my_mnist.py').seed == 42


# ---- resuming -------------------------------------------------------------------------------


def test_resume_check_reads_a_config_json_from_before_discriminator_norm(tmp_path):
  """Runs saved before the field existed had BatchNorm in D."""
  saved = {name: value for name, value in tiny_config(str(tmp_path)).to_dict().items()
           if name != 'discriminator_norm'}
  config = tiny_config(str(tmp_path))
  run_checks.check_resume_config(config, saved, tmp_path)  # 'batch' then and now: resumes.
  config.discriminator_norm = 'spectral'
  with pytest.raises(UserError, match="discriminator_norm 'batch' -> 'spectral'"):
    run_checks.check_resume_config(config, saved, tmp_path)


def test_run_config_is_the_saved_config_with_fields_added_since(tmp_path):
  """`main --workdir=RUN` alone resumes with this: config.json's values (overrides included),
  fields the run predates at what they meant then or at their defaults, locked."""
  from dcgan_jax import config_files  # pylint: disable=g-import-not-at-top
  saved = tiny_config(str(tmp_path)).to_dict()
  saved.update(num_train_steps=7, g_learning_rate=3e-4)
  for name in ('discriminator_norm', 'ema_decay'):  # Fields a run of an older version lacks.
    del saved[name]
  run = tmp_path / 'run'
  assert not config_files.holds_a_run(run)
  (run / 'checkpoints').mkdir(parents=True)
  (run / 'checkpoints' / 'notes.txt').write_text('no step folder')
  assert not config_files.holds_a_run(run)  # main then asks for --config.
  (run / 'checkpoints' / '10').mkdir()
  assert config_files.holds_a_run(run)
  (run / 'config.json').write_text(json.dumps(saved))
  assert config_files.holds_a_run(run)
  config = config_files.run_config(run)
  assert {name: config[name] for name in saved} == saved
  assert config.discriminator_norm == 'batch'  # What runs had before the field existed.
  assert config.ema_decay == load_config('default').ema_decay
  with pytest.raises(AttributeError):  # Locked: a misspelt field is not carried along.
    config.num_train_step = 3
  run_checks.validate_config(config)
  run_checks.check_resume_config(config, saved, run)  # The same models: it resumes.

  (run / 'config.json').write_text('[1, 2]')
  with pytest.raises(UserError, match='does not hold a JSON object'):
    config_files.run_config(run)
  (run / 'config.json').write_text('{"seed": ')  # Cut short.
  with pytest.raises(UserError, match='config.json cannot be read'):
    config_files.run_config(run)
  (run / 'config.json').unlink()
  with pytest.raises(UserError, match='holds no run config'):
    config_files.run_config(run)


def test_resume_check_refuses_turning_ada_on_or_off_but_not_retuning_it(tmp_path):
  """ADA's probability is part of the state; runs saved before ADA existed had none."""
  saved = {name: value for name, value in tiny_config(str(tmp_path)).to_dict().items()
           if not name.startswith('ada_')}
  config = tiny_config(str(tmp_path), augment='translation', ada_target=0.6)
  with pytest.raises(UserError, match=r'ada_target 0.0 -> 0.6 \(adaptive augmentation on/off\)'):
    run_checks.check_resume_config(config, saved, tmp_path)
  saved.update(augment='translation', ada_target=0.5, ada_speed_images=100_000)
  run_checks.check_resume_config(config, saved, tmp_path)  # Another target or speed resumes.


# ---- warnings -------------------------------------------------------------------------------


def test_config_warnings_name_a_gradient_penalty_on_a_batch_normalised_critic(tmp_path):
  config = tiny_config(str(tmp_path), gradient_penalty_weight=10.0, image_size=16)
  (message,) = run_checks.config_warnings(config)
  assert 'discriminator_norm=batch' in message and 'discriminator_norm=layer' in message
  (message,) = run_checks.config_warnings(tiny_config(str(tmp_path), r1_weight=1.0,
                                                      image_size=16))
  assert message.startswith('r1_weight > 0 with discriminator_norm=batch')
  # An 8x8 D has its input layer alone, without BatchNorm: nothing to warn of.
  for fixed in (dict(discriminator_norm='layer'), dict(discriminator_norm='none'),
                dict(gradient_penalty_weight=0.0), dict(image_size=8)):
    assert run_checks.config_warnings(tiny_config(str(tmp_path), **{
        'gradient_penalty_weight': 10.0, 'image_size': 16, **fixed})) == []


def test_config_warnings_name_an_unconstrained_critic_and_fields_nothing_reads(tmp_path):
  """A Wasserstein critic without a penalty or spectral norm diverges (d_loss -7.9 -> -86 in
  400 steps); a config built without load_config is not locked, so a misspelt field set in
  it was carried along unread."""
  (message,) = run_checks.config_warnings(tiny_config(str(tmp_path), loss='wasserstein'))
  assert message.startswith('loss=wasserstein with no gradient_penalty_weight, r1_weight or '
                            'spectral norm: nothing keeps the critic Lipschitz')
  for fixed in (dict(gradient_penalty_weight=10.0, discriminator_norm='layer'),
                dict(r1_weight=1.0, discriminator_norm='none'),
                dict(discriminator_norm='spectral')):
    config = tiny_config(str(tmp_path), loss='wasserstein', **fixed)
    assert run_checks.config_warnings(config) == []
  config = tiny_config(str(tmp_path))
  with config.unlocked():
    config.generator_widht = 32
    config.learning_rate = 1e-3
    config.my_own_note = 'kept, but said'
  assert run_checks.config_warnings(config) == [
      "Config field 'generator_widht' is not one dcgan_jax reads, so it has no effect; did you "
      "mean 'generator_width'?",
      "Config field 'learning_rate' is not one dcgan_jax reads, so it has no effect; did you "
      "mean 'g_learning_rate' or 'd_learning_rate'?",
      "Config field 'my_own_note' is not one dcgan_jax reads, so it has no effect (the fields "
      "are listed in configs/default.py)."]
  # A quality period on data other than digits: no score, said once.
  config = tiny_config(str(tmp_path), dataset='array', quality_every_steps=30, ema_decay=0.0)
  (message,) = run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 200))
  assert message.startswith("The digits quality score (quality_every_steps 30) is for "
                            "dataset='digits' only; this run on 'array' has none.")
  config.quality_every_steps = 0
  assert run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 200)) == []
  # A warm-up as long as the run: the schedule never gets past it.
  config = tiny_config(str(tmp_path), lr_schedule='cosine', warmup_steps=100, num_train_steps=6,
                       ema_decay=0.0)
  (message,) = run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 1797))
  assert message.startswith('warmup_steps 100 is not shorter than the run (6 steps)')
  config.warmup_steps = 5
  assert run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 1797)) == []
  # An EMA whose horizon is longer than the run: its samples stay near the untrained G.
  config.update(ema_decay=0.999, num_train_steps=125)
  (message,) = run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 1797))
  assert message.startswith('ema_decay 0.999 averages over about 1,000 steps, more than this '
                            'run has (125)')
  # The advice fits the run (it said 0.99 whatever the length; 0.99 spans 100 steps).
  assert message.endswith('set ema_decay to about 0.92 (an average over the last tenth of the '
                          'run) or 0.'), message
  config.num_train_steps = 12
  (message,) = run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 1797))
  assert message.endswith('set ema_decay to 0 (the run is too short for an average).'), message
  config.num_train_steps = 1000
  assert run_checks.duration_warnings(config, durations_lib.resolve_durations(config, 1797)) == []


def test_config_warnings_name_augmentation_fields_the_other_settings_leave_unread(tmp_path):
  """ADA sets its own probability: two runs differing only in augment_probability trained
  alike (same Frechet distance), without a word."""
  (message,) = run_checks.config_warnings(tiny_config(
      tmp_path, augment='bgc', ada_target=0.6, augment_probability=0.5))
  assert message.startswith('augment_probability 0.5 has no effect with ada_target > 0')
  (message,) = run_checks.config_warnings(tiny_config(tmp_path, augment_probability=0.5))
  assert message.startswith('augment_probability 0.5 has no effect without augment')
  (message,) = run_checks.config_warnings(tiny_config(tmp_path, augment='bgc',
                                                      ada_speed_images=5000))
  assert message.startswith('ada_speed_images 5,000 has no effect without ada_target > 0')
  for used in (dict(augment='bgc', ada_target=0.6, ada_speed_images=5000),
               dict(augment='translation', augment_probability=0.5)):
    assert run_checks.config_warnings(tiny_config(tmp_path, **used)) == []


def test_describe_objective_names_what_differs_from_the_paper(tmp_path):
  assert run_checks.describe_objective(tiny_config(str(tmp_path))) == (
      'Objective: non_saturating loss, d_steps 1, discriminator_norm batch, augment none.')
  config = tiny_config(str(tmp_path), loss='hinge', gradient_penalty_weight=10.0, d_steps=5,
                       discriminator_norm='layer', r1_weight=0.5, real_label=0.9,
                       augment='translation,color')
  assert run_checks.describe_objective(config) == (
      'Objective: hinge loss, d_steps 5, discriminator_norm layer, gradient penalty 10, '
      'R1 0.5, real_label 0.9, augment color,translation.')
  config = tiny_config(str(tmp_path), augment='cutout', ada_target=0.6)
  assert run_checks.describe_objective(config).endswith(
      'augment cutout (ADA: adaptive probability, target 0.6, 500,000 images per unit).')
  assert run_checks.describe_objective(tiny_config(
      str(tmp_path), augment='cutout', augment_probability=0.3)).endswith(
          'augment cutout (probability 0.3).')


def test_changed_settings_effects_say_what_a_user_would_not_guess(tmp_path):
  config = tiny_config(str(tmp_path), steps_per_dispatch=4, seed=1)
  saved = tiny_config(str(tmp_path)).to_dict()
  effects = run_checks.changed_settings_effects(config, saved)
  assert 'The steps now fuse differently (1 -> 4 per device program' in effects
  assert 'not bit for bit' in effects
  assert "the new seed changes only the data order and the sample grids' latents" in effects
  assert 'batch_size' not in effects
  assert run_checks.changed_settings_effects(tiny_config(str(tmp_path)), saved) == ''
  # A run that never fused its steps (pmap, or data streamed by tf.data) ran the lone step
  # whatever steps_per_dispatch said: nothing to say about it.
  pmap = tiny_config(str(tmp_path), parallelism='pmap', steps_per_dispatch=5).to_dict()
  assert 'fuse' not in run_checks.changed_settings_effects(
      tiny_config(str(tmp_path)), pmap, ('device-resident', 'device-resident'))
  streamed = tiny_config(str(tmp_path), steps_per_dispatch=5).to_dict()
  assert 'fuse' not in run_checks.changed_settings_effects(
      tiny_config(str(tmp_path)), streamed, ('tf.data', 'tf.data'))
  assert 'fuse differently (5 -> 1' in run_checks.changed_settings_effects(
      tiny_config(str(tmp_path)), streamed, ('device-resident', 'device-resident'))


def test_setup_changes_skip_facts_an_older_checkpoint_did_not_record(tmp_path):
  now = run_checks.run_setup(8, device_resident=False)
  code = f"dcgan_jax_code unrecorded -> {now['dcgan_jax_code']!r}"
  assert run_checks.setup_changes({}, now) == [code]  # Saved before the record existed.
  assert run_checks.setup_changes({'devices': 4, 'data': 'tf.data'}, now) == ['devices 4 -> 8',
                                                                              code]
  message = run_checks.describe_setup_changes(10, {'devices': 4}, now, tiny_config(str(tmp_path)))
  assert 'reduced in another order' in message and 'batches' not in message
  # An explicit device_resident gets no advice to set it.
  config = tiny_config(str(tmp_path), device_resident='never')
  message = run_checks.describe_setup_changes(10, {'data': 'device-resident'}, now, config)
  assert 'batches after step 10 are drawn in another order.' in message
  assert 'reduced' not in message


def test_a_checkpoint_from_before_the_code_digest_was_saved_by_older_code(tmp_path):
  """Every checkpoint records the code's digest since it was added, so one without it (of a
  run started before a `pip install -U`) was saved by other code: that resume said nothing,
  where one across two versions that record it says so."""
  now = run_checks.run_setup(8, device_resident=False)
  config = tiny_config(str(tmp_path))
  expected = (
      "Resuming the checkpoint of step 10, saved by other dcgan_jax code: dcgan_jax_code "
      f"unrecorded -> {now['dcgan_jax_code']!r} (an older version, from before checkpoints "
      'recorded a digest of the code). Training goes on from it; bit-identically to a run never '
      'stopped only where the step computes as it did.')
  older = {name: value for name, value in now.items() if name != 'dcgan_jax_code'}
  assert run_checks.describe_setup_changes(10, older, now, config) == expected
  # A checkpoint from before any setup was recorded: its other facts are not compared.
  assert run_checks.describe_setup_changes(10, {}, now, config) == expected
  message = run_checks.describe_setup_changes(10, dict(older, devices=4), now, config)
  assert message.startswith('Resuming the checkpoint of step 10 on another setup than it was '
                            "saved on: devices 4 -> 8, dcgan_jax_code unrecorded -> ")
  assert 'reduced in another order' in message


def test_checkpoints_record_which_code_wrote_them(tmp_path):
  """The version string changes only at releases (it was 0.1.0 at every commit): a resume by
  other code (a git pull or local edits mid-experiment) said nothing. The sources' digest
  tells."""
  package = tmp_path / 'package'
  (package / 'sub').mkdir(parents=True)
  (package / 'a.py').write_text('x = 1\n')
  (package / 'sub' / 'b.py').write_text('y = 2\n')
  (package / 'notes.txt').write_text('not code')
  before = run_checks.source_digest(package)
  # An editor's lock (Emacs' .#a.py: a dangling link) and a folder named like a module: skipped
  # (the lock raised FileNotFoundError, failing the run).
  (package / '.#a.py').symlink_to(package / 'nowhere')
  (package / 'odd.py').mkdir()
  (package / 'notes.txt').write_text('other notes')
  assert run_checks.source_digest(package) == before and len(before) == 12
  (package / 'sub' / 'b.py').write_text('y = 3\n')
  assert run_checks.source_digest(package) != before
  now = run_checks.run_setup(8, device_resident=False)
  assert now['dcgan_jax_code'] == run_checks.code_digest()
  saved = dict(now, dcgan_jax_code='0123456789ab')
  message = run_checks.describe_setup_changes(10, saved, now, tiny_config(str(tmp_path)))
  assert message == (
      "Resuming the checkpoint of step 10, saved by other dcgan_jax code: dcgan_jax_code "
      f"'0123456789ab' -> {now['dcgan_jax_code']!r} (another version, or edits to its files). "
      'Training goes on from it; bit-identically to a run never stopped only where the step '
      'computes as it did.')
  # With another change beside it, that change's effects are said as before.
  message = run_checks.describe_setup_changes(10, dict(saved, devices=4), now,
                                              tiny_config(str(tmp_path)))
  assert 'devices 4 -> 8' in message and 'reduced in another order' in message


def test_changed_settings_name_each_field_its_old_and_new_value():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'loss': 'hinge', 'batch_size': 32, 'seed': 0,
                                      'nested': {'a': 1}, 'betas': (0.5, 0.9), 'new_field': 1})
  saved = {'loss': 'non_saturating', 'batch_size': 32, 'seed': 0, 'nested': {'a': 2},
           'betas': [0.5, 0.9], 'old_field': 'x'}  # (JSON gives lists for tuples.)
  assert run_checks.changed_settings(config, saved) == [
      "loss 'non_saturating' -> 'hinge'", 'nested.a 2 -> 1', 'new_field unset -> 1',
      "old_field 'x' -> unset"]
  assert run_checks.changed_settings(config, json.loads(json.dumps(config.to_dict()))) == []


def test_fields_added_since_an_older_checkpoint_are_named_together(tmp_path):
  """A run written by an older dcgan_jax lacks the fields added since: at their defaults, they
  are one item, not 9-14 'changes' nobody made (found resuming runs of older versions)."""
  config = tiny_config(tmp_path)
  saved = json.loads(json.dumps(config.to_dict()))
  for name in ('augment', 'ada_target', 'profile_steps'):
    del saved[name]
  saved['image_channel_multiple'] = 1  # A default that changed: still a change.
  del saved['g_learning_rate']  # Missing, but not at its default here: still listed.
  config.g_learning_rate = 1e-3
  assert run_checks.changed_settings(config, saved) == [
      'g_learning_rate unset -> 0.001', 'image_channel_multiple 1 -> 0',
      '3 fields added to dcgan_jax since the checkpoint, at their defaults (ada_target, augment, '
      'profile_steps)']


def test_a_config_built_by_hand_names_the_fields_it_lacks(tmp_path):
  """ml_collections said only AttributeError: "'image_size'", from inside the validation."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top
  partial = ml_collections.ConfigDict({'num_train_steps': 10, 'batch_size': 32})
  with pytest.raises(UserError, match=r'The config lacks \d+ fields that configs/default.py '
                                      r'defines \(image_size, .* and \d+ more\); start from the '
                                      r'defaults, e.g. config = dcgan_jax.train.load_config'):
    run_checks.validate_config(partial)
  # One field short (a config file of an older version, or a deleted line): named alone.
  config = load_config().to_dict()
  del config['latent_dim']
  config = ml_collections.ConfigDict(config)
  with pytest.raises(UserError, match=r'lacks 1 field that configs/default.py defines '
                                      r'\(latent_dim\)'):
    run_checks.validate_config(config)
  # An AttributeError that is not about a missing field is left as it is (a bug, not the
  # config), though an optional field is missing too.
  config = load_config().to_dict()
  del config['steps_per_dispatch']
  config = ml_collections.ConfigDict(config)

  def buggy(config):
    raise AttributeError("'int' object has no attribute 'bit_length_typo'")

  original, run_checks._validate_config = run_checks._validate_config, buggy  # pylint: disable=protected-access
  try:
    with pytest.raises(AttributeError, match='bit_length_typo'):
      run_checks.validate_config(config)
  finally:
    run_checks._validate_config = original  # pylint: disable=protected-access
  with pytest.raises(UserError, match='config must be an ml_collections.ConfigDict .* or a dict '
                                      'of its fields; got int'):
    train.train_and_evaluate(5, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('overrides,message', [
    # NaN and inf epoch counts failed in the rounding (a traceback, exit 1).
    ({'log_every_steps': -1, 'log_every_epochs': float('nan')},
     'log_every_epochs is nan; use a finite, non-negative number of epochs'),
    ({'sample_every_steps': -1, 'sample_every_epochs': float('inf')},
     'sample_every_epochs is inf'),
    ({'num_train_steps': -1, 'num_epochs': float('inf')},
     'num_epochs must be a finite positive number with num_train_steps=-1'),
    # inf passed the early check and failed inside training, naming neither field.
    ({'d_learning_rate': float('inf')},
     "d_learning_rate must be a finite positive number, such as the paper's 2e-4"),
    # Sizes far past any device: an allocation of terabytes, or an abort after training.
    ({'generator_width': 10**9}, 'generator_width must be a positive integer such as 64, at '
                                 'most 8,192'),
    ({'latent_dim': 10**9}, 'latent_dim 1,000,000,000 is far larger than any model or run '
                            'fits; use at most 65,536'),
    ({'num_sample_images': 10**9}, 'num_sample_images 1,000,000,000 .* at most 10,000'),
    ({'d_steps': 10**9}, 'd_steps 1,000,000,000 .* at most 1,000'),
    ({'seed': 10**20}, 'seed must be a whole number that fits in 64 bits'),
    # A score of no samples failed at its first step, after training up to it.
    ({'quality_every_steps': 1, 'num_quality_samples': 0},
     'num_quality_samples must be at least 2 to score .*; or set quality_every_steps=0'),
    ({'eval_every_steps': -1, 'eval_every_epochs': 1.0, 'eval_num_samples': -3},
     'eval_num_samples must be at least 2'),
    ({'shuffle_buffer_size': -3}, 'shuffle_buffer_size must be a whole number >= 0'),
    ({'device_resident_max_bytes': -3}, 'device_resident_max_bytes must be a whole number >= 0'),
    ({'eval_preprocessing': 'nope'}, "eval_preprocessing must be one of pytorch_fid or tf"),
    # Found by a sweep of image shapes. The width limit alone let 256x256 at width 8,192 ask for
    # 1.2 TB deep inside jax.
    ({'image_size': 256, 'generator_width': 8192},
     r'generator_width 8,192 at image_size 256 makes the widest layer 262,144 channels '
     r'\(generator_width x image_size / 8\), .* use at most 1,024 at this size'),
    ({'image_size': 64, 'discriminator_width': 4096 + 1}, 'discriminator_width 4,097 at '
                                                          'image_size 64 .* at most 4,096'),
    # Other channel counts trained, then failed at the first sample grid (2) or at the first
    # step's compiling (4 with ADA's colour transform), after the workdir was started.
    ({'channels': 2}, r'channels must be 1 \(grey\) or 3 \(RGB\); 4 \(RGBA\) is read only '
                      r'from dataset array \(got 2\)'),
    ({'channels': 4}, r'4 \(RGBA\) is read only from dataset array'),
    ({'dataset': 'array', 'channels': 5}, r'or 4 \(RGBA\) for dataset array \(got 5\)'),
    ({'dataset': 'array', 'channels': 4, 'augment': 'bgc'},
     "augment 'bgc' includes ada_color .* not channels 4; leave it out"),
    ({'dataset': 'array', 'channels': 4, 'eval_every_steps': 10, 'inception_weights': 'w.pth'},
     r'channels 4 \(RGBA\) cannot be scored: .* Set eval_every_steps=0'),
])
def test_values_no_run_can_use_are_refused_before_anything_runs(tmp_path, overrides, message):
  """Found by a sweep of every config field with bad values through the command line."""
  with pytest.raises(UserError, match=message):
    run_checks.validate_config(tiny_config(tmp_path, **overrides))
  # The same counts are fine where their score is off; the widths at the sizes they fit;
  # RGBA arrays without ADA's colour transform and FID.
  if 'num_quality_samples' in overrides:
    run_checks.validate_config(tiny_config(tmp_path, **dict(overrides, quality_every_steps=0)))
  if 'image_size' in overrides:
    run_checks.validate_config(tiny_config(tmp_path, **dict(overrides, image_size=32)))
  if overrides.get('channels') == 4 and overrides.get('dataset') == 'array':
    run_checks.validate_config(tiny_config(tmp_path, **dict(overrides, eval_every_steps=0,
                                                            augment='blit,geom,cutout')))
    # FID on without weights is off (cifar10.py, mnist.py and celeba.py turn it on by epochs).
    run_checks.validate_config(tiny_config(tmp_path, **dict(overrides, inception_weights='',
                                                            augment='blit,geom,cutout')))


def test_missing_inception_weights_name_the_config_field(tmp_path):
  """The evaluator's text named the file only; in a run, the field is what to change."""
  from dcgan_jax import train_hooks  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, eval_every_steps=2,
                       inception_weights=str(tmp_path / 'missing.pth'))
  with pytest.raises(UserError, match=r'^inception_weights: Inception weights not found at .*'
                                      r'missing.pth; .* Or set eval_every_steps=0 to train '
                                      r'without FID.$'):
    train_hooks.InceptionFIDHook(config, sampler=None, every_steps=2)
