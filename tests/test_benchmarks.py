"""The experiments/ benchmarks: their work models, and --tiny smoke runs so none of them rots."""
import json
import os
import re
import statistics
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments')
sys.path.insert(0, EXPERIMENTS)

import benchmark_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
import benchmark_fid  # pylint: disable=g-import-not-at-top,wrong-import-position
import benchmark_train  # pylint: disable=g-import-not-at-top,wrong-import-position

from dcgan_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from dcgan_jax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position


def _conv_kernel_count(params) -> int:
  """Scalars in the conv/dense kernels only (the FLOP model ignores BN scales and biases)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(int(np.prod(v.shape)) for p, v in flat if 'kernel' in jax.tree_util.keystr(p))


@pytest.mark.parametrize('image_size,width', [(64, 64), (32, 16), (16, 8)])
def test_work_model_matches_the_models(image_size, width):
  # The FLOP model counts layers analytically; their kernels must be the ones our models build.
  g = models.Generator(image_size=image_size, channels=3, width=width, upsample='transpose')
  d = models.Discriminator(image_size=image_size, channels=3, width=width)
  g_vars = jax.eval_shape(lambda k, z: g.init(k, z, train=False), jax.random.key(0),
                          jax.numpy.zeros((1, 100)))
  d_vars = jax.eval_shape(lambda k, x: d.init(k, x, train=False), jax.random.key(0),
                          jax.numpy.zeros((1, image_size, image_size, 3)))
  expected = _conv_kernel_count(g_vars['params']) + _conv_kernel_count(d_vars['params'])
  assert benchmark_train.param_count(image_size, width) == expected


def test_flops_per_image_is_the_quoted_2_5_gflop():
  flops = benchmark_train.step_flops(64, 64)
  assert 2.4e9 < flops < 2.6e9
  # Doubling the width quadruples every conv except the first/last: close to 4x overall.
  assert 3.5 < benchmark_train.step_flops(64, 128) / flops < 4.0
  # Bytes scale with batch and dtype width.
  assert benchmark_train.step_bytes(256, 2) > 1.8 * benchmark_train.step_bytes(128, 2)
  assert benchmark_train.step_bytes(128, 4) > benchmark_train.step_bytes(128, 2)


def test_torch_anchor_has_the_same_layers():
  torch = pytest.importorskip('torch')
  net_g, net_d = benchmark_train.torch_models(32, 16)
  kernels = sum(p.numel() for n, p in net_g.named_parameters() if p.dim() == 4)
  kernels += sum(p.numel() for n, p in net_d.named_parameters() if p.dim() == 4)
  assert kernels == benchmark_train.param_count(32, 16)
  with torch.no_grad():
    images = net_g(torch.zeros(2, 100, 1, 1))
    assert tuple(images.shape) == (2, 3, 32, 32)
    assert tuple(net_d(images).shape) == (2, 1, 1, 1)


def test_bad_flags_are_user_errors(capsys):
  assert benchmark_train.main(['--batch_sizes', '0']) == 2
  assert benchmark_train.main(['--dtypes', 'float16']) == 2
  assert benchmark_train.main(['--xla_variants', '{not json']) == 2
  assert benchmark_train.main(['--xla_variants', '{"graph1": 1}']) == 2
  assert benchmark_train.main(['--model_variants', '[8]']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 5 and 'float16' in err[1]
  assert '--xla_variants is not JSON' in err[2] and 'dict of XLA options' in err[3]
  assert '--model_variants must map' in err[4] and 'image_channel_multiple' in err[4]
  assert benchmark_checkpoint.main(['--repeats', '0']) == 2
  assert benchmark_checkpoint.main(['--image_size', '48']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and 'repeats must be positive' in err[0] and '48' in err[1]


def test_profile_inception_bad_flags_are_one_usage_line(tmp_path):
  for flags, message in [(['--network', 'nope'], "Unknown network variant part 'nope'"),
                         (['--compiler_options', '{bad'], '--compiler_options is not JSON'),
                         (['--compiler_options', '[1]'], 'must be a JSON object')]:
    proc = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, 'profile_step.py'),
                           '--model', 'inception', '--out_dir', str(tmp_path), *flags],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr
    assert not list(tmp_path.iterdir())  # Nothing profiled, nothing written.


def _run(script, tmp_path, *flags, without_tensorflow=False):
  out = tmp_path / f'{script}.json'
  # Without TensorFlow, as on the GPU machine: only the core, clu and ml_collections.
  runner = [os.path.join(REPO, 'tests', 'no_tensorflow_runner.py')] if without_tensorflow else []
  proc = subprocess.run([sys.executable, *runner, os.path.join(EXPERIMENTS, f'{script}.py'),
                         '--tiny', '--out', str(out), *flags],
                        capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  record = json.loads(out.read_text())
  assert record['complete'] is True
  if script != 'benchmark_checkpoint':  # Every row was also reported as it was measured.
    measured = [line for line in proc.stdout.splitlines() if line.startswith('measured {')]
    assert len(measured) == len(record['rows'])
  return record, proc.stdout


def _check_environment(record):
  env = record['environment']
  for key in ('date_utc', 'device_kind', 'jax_version', 'jax_backend'):
    assert env[key]
  assert record['targets_apply'] is False  # A tiny run is never an H100 result.


@pytest.mark.slow
def test_benchmark_train_tiny(tmp_path):
  variants = {'graph1': {'xla_gpu_graph_min_graph_size': 1}}
  model_variants = {'pad8': {'image_channel_multiple': 8}}
  # bfloat16 only: every variant is one more compile, and the float32 step (the same code with
  # another dtype) runs in the time-limit test below.
  record, stdout = _run('benchmark_train', tmp_path, '--repeats', '1', '--dtypes', 'bfloat16',
                        '--xla_variants', json.dumps(variants), '--model_variants',
                        json.dumps(model_variants), '--combine', 'always')
  _check_environment(record)
  # The dtype also ran compiled with the variant's XLA options (a GPU option: fine on CPU)
  # and with models built with the model variant's arguments.
  assert record['xla_variants'] == variants and record['model_variants'] == model_variants
  tuned = [r for r in record['rows'] if r['method'] == 'dcgan_jax[graph1]']
  assert [r['dtype'] for r in tuned] == ['bfloat16']
  assert all(r['compiler_options'] == variants['graph1'] and 'error' not in r for r in tuned)
  padded = [r for r in record['rows'] if r['method'] == 'dcgan_jax[pad8]']
  assert [r['dtype'] for r in padded] == ['bfloat16']
  assert all(r['model_options'] == model_variants['pad8'] and 'error' not in r and
             r['ms_per_step'] > 0 for r in padded)
  # The fastest of each kind, timed together ('always': whether or not each beat the default).
  both = [r for r in record['rows'] if r['method'] == 'dcgan_jax[graph1+pad8]']
  assert [r['dtype'] for r in both] == ['bfloat16']
  assert all(r['compiler_options'] == variants['graph1'] and
             r['model_options'] == model_variants['pad8'] and 'error' not in r for r in both)
  assert record['table'] in stdout and 'img/s' in stdout
  ours = [r for r in record['rows'] if r['method'] == 'dcgan_jax']
  assert [r['dtype'] for r in ours] == ['bfloat16']
  for row in record['rows']:
    assert row['batch'] == 16 and row['ms_per_step'] > 0
    assert row['img_per_s'] == pytest.approx(16 / row['ms_per_step'] * 1e3)
    expected_tflops = record['flop_model']['flops_per_image_step'] * row['img_per_s'] / 1e12
    assert row['tflop_per_s'] == pytest.approx(expected_tflops)
  if record['environment'].get('torch_version'):
    assert any(r['method'] == 'torch_examples' for r in record['rows'])
    assert set(record['ratios_vs_torch']) == {'b16_bfloat16'}
    assert set(record['variant_ratios_vs_torch']) == {
        f'b16_bfloat16_{v}' for v in ('graph1', 'pad8', 'graph1+pad8')}


def test_fastest_variant_picks_what_to_combine():
  ms = {'a': 2.0, 'b': 1.5, 'broken': float('nan')}
  assert benchmark_train.fastest_variant(ms, 1.8, 'winners') == 'b'
  assert benchmark_train.fastest_variant(ms, 1.4, 'winners') is None  # Nothing beat the default.
  assert benchmark_train.fastest_variant(ms, 1.4, 'always') == 'b'
  assert benchmark_train.fastest_variant(ms, 1.8, 'off') is None
  assert benchmark_train.fastest_variant({'broken': float('nan')}, 9.0, 'always') is None
  assert benchmark_train.fastest_variant({}, 9.0, 'always') is None


def test_a_benchmark_killed_by_its_time_limit_leaves_what_it_measured(tmp_path):
  """On the GPU machine every benchmark runs under `timeout`: killed after its first row, the
  JSON at --out already holds that row, marked incomplete."""
  out = tmp_path / 'train.json'
  proc = subprocess.Popen(
      [sys.executable, os.path.join(EXPERIMENTS, 'benchmark_train.py'), '--tiny', '--no_torch',
       '--repeats', '1', '--dtypes', 'float32,bfloat16', '--out', str(out)],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
  try:
    for line in proc.stdout:
      if line.startswith('measured {'):
        break
    proc.kill()
  finally:
    proc.wait(timeout=60)
  record = json.loads(out.read_text())
  assert record['complete'] is False and record['benchmark'] == 'train_step'
  assert record['rows'][0] == json.loads(line[len('measured '):])
  assert record['rows'][0]['method'] == 'dcgan_jax' and record['rows'][0]['ms_per_step'] > 0
  assert record['rows'][0]['dtype'] == 'float32'  # The float32 step of the benchmark ran.
  assert record['environment']['jax_version']


@pytest.mark.slow
def test_benchmark_fid_tiny(tmp_path):
  variants = {'graph1': {'xla_gpu_graph_min_graph_size': 1}, 'bad': {'xla_no_such_option': 1}}
  # Batches of 2, one timed run per row: each row is one more Inception-v3 at 299x299 compiled
  # and run on CPU (8 rows), so the smallest sizes keep this smoke run short.
  record, stdout = _run('benchmark_fid', tmp_path, '--batch_sizes', '2', '--num_images', '2',
                        '--repeats', '1', '--fid_n', '4', '--fid_batch', '2',
                        '--xla_variants', json.dumps(variants),
                        '--network_variants', 'unmerged+pad4', '--combine', 'always')
  _check_environment(record)
  assert record['table'] in stdout and 'FID-4' in stdout
  rows = {r['method']: r for r in record['rows']}
  assert {'dcgan_jax_extractor', 'dcgan_jax_device', 'dcgan_jax_device[graph1]',
          'dcgan_jax_device[unfolded]', 'dcgan_jax_device[unmerged+pad4]'} <= set(rows)
  # The plain row is the extractor's default form; a variant changes it.
  assert rows['dcgan_jax_device']['network'] == {'merge_siblings': True, 'input_channels': 3,
                                                 'merge_pool_branches': False}
  assert rows['dcgan_jax_device[unmerged+pad4]']['network'] == {
      'merge_siblings': False, 'input_channels': 4, 'merge_pool_branches': False}
  both = rows['dcgan_jax_device[unmerged+pad4+graph1]']  # The failed 'bad' is never chosen.
  assert not both['network']['merge_siblings'] and both['compiler_options'] == variants['graph1']
  # An option set XLA refuses is recorded with its error; the run goes on.
  assert 'No such compile option' in rows.pop('dcgan_jax_device[bad]')['error']
  assert rows['dcgan_jax_device[graph1]']['compiler_options'] == variants['graph1']
  for row in rows.values():
    assert row['batch'] == 2 and row['img_per_s'] > 0
  fid = record['fid']
  assert fid['n'] == 4 and len(fid['runs']) == 1  # --repeats 1: the cold run.
  assert np.isfinite(fid['runs'][0]['fid']) and fid['warm_s'] > 0
  # The phase-timed run (synced after every phase) draws the same latents: the same FID.
  assert fid['runs'][0]['fid'] == pytest.approx(fid['phases']['fid'])
  assert fid['phases']['total_s'] > 0


@pytest.mark.slow
def test_benchmark_loop_tiny_without_tensorflow(tmp_path):
  variants = {'while_graphs': {'xla_gpu_enable_command_buffer':
                                   'FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL'}}
  record, stdout = _run('benchmark_loop', tmp_path, '--xla_variants', json.dumps(variants),
                        without_tensorflow=True)
  _check_environment(record)
  assert not record['skipped'], record
  assert record['table'] in stdout
  assert record['dataset'] == {**record['dataset'], 'kind': 'array', 'num_examples': 64}
  assert record['step_only']['img_per_s'] > 0
  assert set(record['loop_wall_s']) == {'2', '12'}
  # Checkpoint saves timed: the final one in each run, plus periodic ones at steps 4 and 8.
  saves = record['checkpoint_saves_s']
  assert len(saves['2']) == 1 and len(saves['12']) == 3 and min(saves['12']) > 0
  assert record['periodic_checkpoint_ms_per_step'] > 0
  # The loop's own rate: its log windows after the first (logs every 2 steps up to 12).
  windows = record['in_run_windows']
  assert windows['steps'] == 10 and windows['windows'] == 5 and windows['seconds'] > 0
  assert len(windows['ms_per_step_by_window']) == 5 and record['loop_vs_step_in_run'] > 0
  assert 'loop (in-run windows)' in record['table']
  # The default saves in a worker: the loop waits only for the device copy's dispatch. The
  # other setting's run (saves in the loop) gives its own windows.
  other = record['other_saves']
  assert record['settings']['background_checkpoints'] == 1
  assert other['background_checkpoints'] is False and len(other['checkpoint_saves_s']) == 3
  assert other['in_run_windows']['windows'] == 5 and other['loop_vs_step_in_run'] > 0
  assert 'loop (in-run windows, saves in the loop)' in record['table']
  # Both dispatch modes of the loop's per-step work were timed on the same images, and the
  # fused one again compiled with the variant's XLA options (GPU options: fine on CPU).
  assert set(record['dispatch_modes']) == {'per_step', 'one_program', 'fused',
                                           'fused[while_graphs]'}
  assert all(m['ms_per_step'] > 0 for m in record['dispatch_modes'].values())
  assert '4 per dispatch[while_graphs]' in record['table']
  assert '1 per dispatch (default)' in record['table'] and '4 dispatches per step' in record['table']


def test_benchmark_loop_tiny_loop_only_with_samples(tmp_path):
  """--sample_every: the real program's grids in every loop run; --loop_only: nothing else."""
  record, stdout = _run('benchmark_loop', tmp_path, '--sample_every', '5', '--loop_only',
                        '--workdir', str(tmp_path / 'work'), without_tensorflow=True)
  assert not record['skipped'], record
  assert record['settings']['sample_every'] == 5
  assert sorted(p.name for p in (tmp_path / 'work' / 'run_2_12' / 'samples').glob('*.png')) == [
      'step_000005.png', 'step_000010.png', 'step_000012.png']
  assert record['in_run_windows']['windows'] == 5 and record['loop_vs_step_in_run'] > 0
  assert record['other_saves'] is None and record['dispatch_modes'] == {}
  assert [row['method'] for row in record['rows']] == [
      'loop (in-run windows)', 'loop (steady state)', 'loop (end to end)', 'step only']
  assert record['table'] in stdout
  assert not (tmp_path / 'work' / 'run_3_12_other_saves').exists()


def test_benchmark_checkpoint_tiny(tmp_path):
  record, stdout = _run('benchmark_checkpoint', tmp_path, '--repeats', '2')
  _check_environment(record)
  assert record['table'] in stdout
  # All methods saved the same arrays (read back with plain orbax), each timed twice.
  assert record['identical_arrays'] is True
  methods = [r['method'] for r in record['rows']]
  assert methods == ['dcgan_jax Checkpointer', 'orbax StandardSave (copies)',
                     'dcgan_jax background save']
  for row in record['rows']:
    assert row['saves'] == 2 and 0 < row['min_ms'] <= row['median_ms'] <= row['max_ms']
  assert record['state']['values'] > 0
  assert record['speedup_vs_anchor'] == pytest.approx(
      record['rows'][1]['median_ms'] / record['rows'][0]['median_ms'])
  # The loop's thread kept dispatching while the worker saved (two saves, counted apart).
  dispatch = record['dispatch_during_background_save']
  assert dispatch['alone']['per_s'] > 0 and len(dispatch['during_background_saves']) == 2
  assert all(d['seconds'] > 0 for d in dispatch['during_background_saves'])
  assert dispatch['ratio'] == pytest.approx(statistics.median(
      d['per_s'] for d in dispatch['during_background_saves']) / dispatch['alone']['per_s'])
  assert 'while the worker saves' in stdout


def _run_profile_tiny(out_dir, *flags):
  """experiments/profile_step.py --tiny in a subprocess; fails the test if it fails."""
  result = subprocess.run(
      [sys.executable, os.path.join(EXPERIMENTS, 'profile_step.py'), '--tiny', *flags,
       '--out_dir', str(out_dir)],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', '')))
  assert result.returncode == 0, result.stderr[-2000:]


def test_profile_step_tiny_writes_hlo_and_summary(tmp_path):
  _run_profile_tiny(tmp_path, '--dtypes', 'float32', '--image_channel_multiple', '8')
  hlo = (tmp_path / 'step_float32_pad8.hlo.txt').read_text()
  # The padded models' image convolutions still see 8 channels after XLA's optimizations.
  assert 'HloModule' in hlo and '16,16,8]' in hlo
  summary = json.loads((tmp_path / 'profile_float32_pad8.json').read_text())
  assert summary['dtype'] == 'float32' and summary['wall_ms_per_step_traced'] > 0
  assert summary['model_options'] == {'image_channel_multiple': 8}


@pytest.mark.slow
def test_profile_inception_tiny_writes_hlo_and_summary(tmp_path):
  """The FID network's profile (random weights of the real shapes, a batch of 2) on CPU, in a
  form and with XLA options given on the command line (the default: the extractor's form)."""
  _run_profile_tiny(tmp_path, '--model', 'inception', '--network', 'poolmerged',
                    '--compiler_options', '{"xla_gpu_graph_min_graph_size": 1}')
  hlo = (tmp_path / 'inception.hlo.txt').read_text()
  assert 'HloModule' in hlo and 'convolution' in hlo
  summary = json.loads((tmp_path / 'profile_inception.json').read_text())
  assert summary['model'] == 'inception' and summary['batch'] == 2
  assert summary['network'] == {'merge_siblings': True, 'merge_pool_branches': True,
                                'input_channels': 3}
  assert summary['compiler_options'] == {'xla_gpu_graph_min_graph_size': 1}
  assert summary['wall_ms_per_step_traced'] > 0 and summary['img_per_s'] > 0


def test_gpu_session_script_parses_and_names_every_part():
  """gpu_session.sh runs only on a GPU machine: check here that bash parses it and that its
  'unknown part' message lists every part it implements (what PERF.md's plan calls)."""
  script = os.path.join(EXPERIMENTS, 'gpu_session.sh')
  assert subprocess.run(['bash', '-n', script], check=False).returncode == 0
  text = open(script).read()
  parts = set(re.findall(r'^    (\w+)\) ', text, re.M))
  assert {'train', 'xla', 'profpad', 'loopN', 'profinc'} <= parts
  listed = re.search(r'unknown part \$part \(([^)]*)\)', text).group(1)
  assert set(listed.split(', ')) == parts
  # The device-session plan in PERF.md calls only parts the script has.
  plan = open(os.path.join(EXPERIMENTS, 'PERF.md')).read()
  planned = [set(p.split()) for p in re.findall(r'PARTS="([^"]*)"', plan)]
  assert len(planned) >= 2 and set().union(*planned) <= parts, planned


def _session_variants():
  """The option sets gpu_session.sh passes as --xla_variants / --model_variants, by name."""
  script = os.path.join(EXPERIMENTS, 'gpu_session.sh')
  names = ('step_variants', 'inc_variants', 'model_variants', 'loop_variants', 'inc_network',
           'step1024_variants')
  # Evaluate only the assignments (the script itself needs a GPU machine).
  lines = [line for line in open(script).read().splitlines()
           if re.match(r'^(cmd_conv|cmd_xla|graphs|concurrent|%s)=' % '|'.join(names), line)]
  shell = '\n'.join(lines + [f'printf "%s\\n" "${name}"' for name in names])
  out = subprocess.run(['bash', '-c', shell], capture_output=True, text=True, check=True).stdout
  return dict(zip(names, out.splitlines()))


def test_gpu_session_variants_parse_and_xla_knows_every_option():
  """A misspelt option or enum value would only show on the GPU machine, as a wasted row:
  XLA validates GPU option names and values on any backend, so compile each set here."""
  variants = _session_variants()
  assert set(benchmark_train.parse_model_variants(variants['model_variants'])) == {'pad1'}
  network = benchmark_fid.parse_network_variants(variants['inc_network'])
  # Variants change the extractor's default form (merged siblings, RGB as is).
  assert network['unmerged'] == {'merge_siblings': False, 'input_channels': 3,
                                 'merge_pool_branches': False}
  assert network['pad4'] == {'merge_siblings': True, 'input_channels': 4,
                             'merge_pool_branches': False}
  assert network['poolmerged'] == {'merge_siblings': True, 'input_channels': 3,
                                   'merge_pool_branches': True}
  # Each form's options are what the extractor's variables are built with (bench_device passes
  # them on), and the network they select is that form.
  from dcgan_jax.evaluation import extractor, inception  # pylint: disable=g-import-not-at-top
  shapes = inception.variable_shapes()
  ones = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  for name, expected in [('poolmerged', dict(merged=True, pool_merged=True)),
                         ('unmerged', dict(merged=False, pool_merged=False))]:
    form_variables = inception.inference_variables(ones, **network[name])
    assert extractor.network_for(form_variables, 'default') == inception.FIDInceptionV3(
        folded=True, **expected), name
  assert benchmark_fid.parse_network_variants('unmerged+pad8')['unmerged+pad8'] == {
      'merge_siblings': False, 'input_channels': 8, 'merge_pool_branches': False}
  with pytest.raises(UserError, match="valid parts: 'merged', 'unmerged', 'poolmerged' and"):
    benchmark_fid.parse_network_variants('merged+pad2')
  xla_sets = {}
  for name in ('step_variants', 'inc_variants', 'loop_variants', 'step1024_variants'):
    parsed = benchmark_train.parse_xla_variants(variants[name])
    assert parsed and ('conv_graphs' in parsed or 'conv_concurrent' in parsed), name
    xla_sets.update({f'{name}/{k}': v for k, v in parsed.items()})
  # Every shell variable a set uses was defined (an undefined one expands to ''): only
  # no_graphs turns the graphs off on purpose.
  assert [name for name, options in xla_sets.items() if '' in options.values()] == [
      'step_variants/no_graphs']
  assert xla_sets['inc_variants/conv_concurrent'][
      'xla_gpu_command_buffer_scheduling_mode'] == 'CONCURRENT_REGIONS'
  f = jax.jit(lambda x: x * 2)
  for name, options in xla_sets.items():
    f.lower(np.ones(3, np.float32)).compile(compiler_options=options)  # Raises on an unknown option.
  with pytest.raises(Exception, match='not a valid enum value'):
    f.lower(np.ones(3, np.float32)).compile(compiler_options={'xla_gpu_enable_command_buffer': 'NOPE'})
