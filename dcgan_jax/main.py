r"""Command line of the DCGAN trainer.

  python -m dcgan_jax.main --config=configs/default.py --workdir=/tmp/dcgan_digits \
      [--config.batch_size=128 --config.num_epochs=10 ...]

Re-running with the same --workdir resumes from its latest checkpoint; --workdir alone resumes
with the settings the run was last started with (its config.json). Multi-process runs
(several hosts, or several processes on one machine) pass --coordinator_address,
--num_processes and --process_id, or --distributed to let JAX detect them (TPU pods, SLURM).

Mistakes (an unknown config field, a bad value, a missing dataset, an unwritable workdir, ...)
print one sentence on stderr and exit with status 2, without a traceback. SIGTERM or Ctrl-C
during training saves a checkpoint of the step in flight, says so in one line and exits with
128 + the signal's number (143, 130); the same command resumes from it.
"""

from __future__ import annotations

import os
import re
import signal
import sys


def _stop_while_importing(signum, frame):
  """SIGINT while the program imports its libraries (before :func:`run`): nothing has started,
  so stop now, in one line (Python's own handler would print a traceback of the import)."""
  del signum, frame
  sys.stderr.write('Interrupted while starting: nothing ran.\n')
  raise SystemExit(128 + signal.SIGINT)  # SystemExit ends the program without a traceback.


# First thing, as `python -m dcgan_jax.main`; left alone when imported (and where SIGINT is ignored).
if __name__ == '__main__' and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
  signal.signal(signal.SIGINT, _stop_while_importing)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dcgan_jax import cli_logging
from dcgan_jax import command_line
from dcgan_jax import config_files
from dcgan_jax import preemption
from dcgan_jax.errors import UserError, exit_with_user_error, first_line

FLAGS = flags.FLAGS

# importlib.reload(dcgan_jax.main) (a notebook cell run again after an edit) defines the flags
# below a second time, which absl refuses (DuplicateFlagError) wherever its own reload detection
# misses: it watches imports from just before the last finder of sys.meta_path, and an
# editable install (pip install -e, as the Colab notebook does) adds a finder after it. The
# flags of the earlier definition go first; a first import finds none.
for _flag in FLAGS.get_flags_for_module(__name__):
  delattr(FLAGS, _flag.name)

config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py); fields can be overridden with '
    '--config.<field>=<value>. Not needed to resume a run with its own settings.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples; re-using it '
                    'resumes the run (alone, with the settings in its config.json).')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (auto-detected '
                  'cluster settings, e.g. on TPU pods or SLURM; implied when the environment '
                  'sets JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 for multi-process runs '
                    '(implies --distributed).')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_bool('library_logs', False, 'Also print the INFO logs of orbax, tensorflow-datasets '
                  'and JAX start-up (hidden by default; their warnings and errors always show).')
flags.DEFINE_integer('process_id', None, 'Index of this process in a multi-process run.')


_fail = exit_with_user_error


def _config_load_message(error: Exception, config_path: str | None) -> str:
  """'Cannot load the config file ...' with the root cause (e.g. the missing file)."""
  file = (config_path or '').split(':', 1)[0]  # (path:args is allowed)
  if file and not os.path.isfile(file):
    if file.startswith('~'):
      return (f'Cannot load the config file {config_path!r}: no such file (a shell expands ~ '
              "only at the start of a word, not after '--config='); write the full path.")
    if os.path.isabs(file):
      return f'Cannot load the config file {config_path!r}: no such file.'
    return (f'Cannot load the config file {config_path!r}: no such file relative to the '
            f'working directory {os.getcwd()!r}. configs/ comes with the repository, not with '
            'the installed package: run from the root of a clone, or pass the file\'s full path.')
  reason = error
  while (reason.__cause__ or reason.__context__) is not None:
    reason = reason.__cause__ or reason.__context__
  detail = next((line.strip() for line in str(reason).splitlines() if 'Errno' in line),
                f'{type(reason).__name__}: {(str(reason).splitlines() or [""])[0]}')
  return (f'Cannot load the config file {config_path!r} ({detail}); pass --config=configs/'
          '<name>.py.')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake turned into one line on stderr and exit 2."""
  config_path = command_line.config_arg(argv)
  if config_path and config_path.split(':', 1)[0].endswith('.json'):
    # ml_collections loads Python files only: it said "NameError: name 'true' is not defined".
    _fail(f'--config takes a Python config file (configs/*.py), not {config_path!r}; to resume '
          "a run with the settings in its config.json, pass --workdir=<the run's folder> alone.")
  # absl knows --help (and --helpshort, --helpfull) but not -h or -?, which the other programs
  # take.
  argv = [argv[0], *('--help' if arg in ('-h', '-?') else arg for arg in argv[1:])]
  try:
    remaining = FLAGS(argv)
  except SystemExit as e:
    # absl printed the help for --help (and -h, --helpshort, ...) and exits with status 1;
    # like the other programs, asking for help succeeds.
    if e.code == 1 and any(arg in command_line.HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise
  except flags.UnrecognizedFlagError as e:  # A misspelt flag, or --no_library_logs.
    if config_path is None and e.flagname.startswith('config.'):
      _fail(f'--{e.flagname} overrides a field of a config file: pass --config=<file> too, '
            'e.g. --config=configs/default.py (to resume a run with a changed setting, the file '
            'and overrides it was started with, and the change).')
    _fail(command_line.unknown_flag_message(e.flagname, list(FLAGS),
                                            command_line.boolean_flags(FLAGS)))
  except flags.Error as e:
    message = command_line.config_value_message(e, config_path)
    if (message is None and (e.__cause__ or e.__context__) is not None
        and str(e).startswith('flag --config')):
      # The config file's get_config() raised: absl's first line ends in a colon and puts the
      # reason, which the user needs, on the lines below. (A bad value of another flag, e.g.
      # --distributed=maybe, has a cause too: absl's own line names it.)
      message = _config_load_message(e, config_path)
    _fail(message or first_line(e))
  except (AttributeError, KeyError) as e:  # ml_collections: --config.<unknown field>=...
    _fail(command_line.nested_override_message(argv, config_path)
          or command_line.unknown_config_field_message(e, argv))
  except Exception as e:  # pylint: disable=broad-except  # A config file that cannot load.
    _fail(command_line.nested_override_message(argv, config_path)
          or _config_load_message(e, config_path))
  if len(remaining) > 1:
    _fail(f'Unexpected arguments {" ".join(remaining[1:])!r}; pass options as --name=value.')
  if config_path is None:
    if not FLAGS.workdir:
      _fail('--config is required, e.g. --config=configs/default.py (to resume a run, '
            '--workdir=<its folder> alone is enough).')
    if not config_files.holds_a_run(FLAGS.workdir):
      _fail(f'--config is required to start a run, e.g. --config=configs/default.py: the '
            f'workdir {FLAGS.workdir} holds no run to resume (no {config_files.RUN_CONFIG_FILE}).')
    return remaining  # FLAGS.config stays None: main() resumes with the run's own config.
  try:
    FLAGS.config.keys()  # The file is loaded lazily, on first use.
  except Exception as e:  # pylint: disable=broad-except
    _fail(_config_load_message(e, config_path))
  if not FLAGS.workdir:
    _fail('--workdir is required, e.g. --workdir=/tmp/dcgan_digits.')
  return remaining


def _initialize_distributed() -> None:
  """jax.distributed.initialize() when the flags or the environment ask for it."""
  import jax  # pylint: disable=g-import-not-at-top

  wanted = (FLAGS.distributed or FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1
            or os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if not wanted:
    return
  # Cross-process collectives on CPU devices need an implementation; gloo ships with jaxlib.
  # (It only affects the CPU backend, so it is harmless on GPU/TPU hosts.)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info('JAX process %d of %d.', jax.process_index(), jax.process_count())


def main(argv: list[str]) -> None:
  del argv
  from dcgan_jax import run_checks  # pylint: disable=g-import-not-at-top
  from dcgan_jax import train  # pylint: disable=g-import-not-at-top

  cli_logging.quiet_library_logs(not FLAGS.library_logs)

  try:
    _initialize_distributed()  # Before anything else touches the JAX backends.
    # Config mistakes are reported in a second, before TensorFlow (seconds to import) loads:
    # train_and_evaluate checks the data settings next, and TensorFlow loads only where the
    # input pipeline or the TensorBoard writer needs it, hidden from the accelerators then
    # (dcgan_jax.tensorflow_devices), so it takes no GPU memory that JAX needs.
    config = FLAGS.config
    if config is None:  # --workdir alone: the run goes on with the settings it was started with.
      config = config_files.run_config(FLAGS.workdir)
      logging.info('No --config: %s goes on with the settings it was last started with.',
                   FLAGS.workdir)
    try:
      run_checks.validate_config(config)
    except (AttributeError, KeyError) as e:
      if FLAGS.config is not None:
        raise
      # An older config.json, where configs/default.py is not beside the package to fill in
      # the fields added since (a plain pip install).
      field = re.search(r"'(\w+)'", str(e))
      raise UserError(f'The config.json of {FLAGS.workdir} lacks a field this version of '
                      f"dcgan_jax reads ({field[1] if field else e}); pass the config file and "
                      'the overrides the run was started with, --config=... .') from e
    run_checks.check_workdir_path(FLAGS.workdir)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    cli_logging.no_progress_bars_off_a_terminal()
    train.train_and_evaluate(config, FLAGS.workdir)
  except UserError as e:
    logging.flush()
    _fail(str(e))
  except preemption.TrainingStopped as e:  # SIGTERM or Ctrl-C, after a checkpoint was saved.
    logging.flush()
    sys.stderr.write(f'{e}\n')
    sys.stderr.flush()
    sys.exit(e.exit_status)


def run() -> None:
  """Console entry point."""
  if signal.getsignal(signal.SIGINT) is _stop_while_importing:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  preemption.listen_during_start_up()  # Before JAX loads (in main).
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:  # Ctrl-C while starting, or a second one: stopped at once.
    _exit_at_the_next_ctrl_c()
    logging.flush()
    # Not "without saving": a second Ctrl-C often lands while the first one's checkpoint is
    # being written, and that save may well have completed.
    sys.stderr.write('Interrupted: stopped at once; the same command resumes from the latest '
                     'checkpoint saved in the workdir (steps after it are trained again).\n')
    sys.stdout.flush()
    sys.stderr.flush()
    # Without the interpreter's clean-up: a Ctrl-C that broke off an orbax save leaves orbax's
    # threads behind, and Python's exit then printed their errors ("cannot schedule new futures
    # after shutdown") and, 1 time in 10, waited minutes for them. The loop's `finally` blocks
    # (writers flushed and closed) have run; a save broken off stays a temporary folder, which
    # resuming ignores.
    os._exit(128 + signal.SIGINT)  # As a shell reports SIGINT.  pylint: disable=protected-access
  except SystemExit:
    _exit_at_the_next_ctrl_c()
    raise


def _exit_at_the_next_ctrl_c() -> None:
  """Once the program has said how it ends, a further Ctrl-C ends the process at once, instead
  of raising KeyboardInterrupt inside the interpreter's clean-up (a traceback after the last
  line; everything is saved by then)."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == '__main__':
  run()
