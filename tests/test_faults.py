"""Nothing torn under faults: a full disk half-way through a write, or a kill,
leaves every output file whole (old or new), no temporary file, and the
command ends with one message and exit code 5."""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest

from experiments import cli
from sosvae_jax import metric_writers
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.evaluation import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENOSPC_TEXT = 'No space left on device'


def _full_disk(monkeypatch, name: str) -> list[str]:
  """Writes of a file called `name` stop half-way with ENOSPC, as on a full
  disk; other files are written. Returns the temporary paths it cut."""
  real = workdir_lib._write_bytes  # pylint: disable=protected-access
  cut = []

  def write_half_then_fail(fd, data):
    tmp = os.readlink(f'/proc/self/fd/{fd}')
    if not os.path.basename(tmp).startswith(f'.{name}.'):
      return real(fd, data)
    real(fd, data[:len(data) // 2])
    cut.append(tmp)
    raise OSError(errno.ENOSPC, ENOSPC_TEXT)

  monkeypatch.setattr(workdir_lib, '_write_bytes', write_half_then_fail)
  return cut


def _temporaries(folder) -> list[str]:
  return sorted(str(p) for p in pathlib.Path(folder).rglob('*.tmp'))


# ------------------------------------------------------------ the one helper
@pytest.mark.parametrize('data', ['new text', b'\x89PNG new bytes' * 1000])
def test_full_disk_half_way_keeps_the_old_file_whole_and_no_temporary(
    tmp_path, monkeypatch, data):
  path = tmp_path / 'results.json'
  path.write_text('old, whole')
  cut = _full_disk(monkeypatch, 'results.json')
  with pytest.raises(workdir_lib.WriteError) as error:
    workdir_lib.write_atomic(str(path), data)
  assert cut and not os.path.exists(cut[0])  # it was written half, then removed
  assert path.read_text() == 'old, whole'
  assert _temporaries(tmp_path) == []
  message = str(error.value)
  assert str(path) in message and f'{ENOSPC_TEXT} (ENOSPC)' in message
  assert 'Free space' in message and 'rerun the same command' in message


def test_a_failed_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / 'gmm.json'
  path.write_text('old')
  monkeypatch.setattr(workdir_lib.os, 'replace', lambda *a: (_ for _ in ()).throw(
      OSError(errno.EIO, 'Input/output error')))
  with pytest.raises(workdir_lib.WriteError, match='Input/output error'):
    workdir_lib.write_atomic(str(path), 'new')
  assert path.read_text() == 'old' and _temporaries(tmp_path) == []


def test_write_atomic_writes_new_files_whole_and_readable(tmp_path):
  path = tmp_path / 'new.md'
  workdir_lib.write_atomic(str(path), 'table\n')
  workdir_lib.write_atomic(str(path), 'table 2\n')
  assert path.read_text() == 'table 2\n' and os.listdir(tmp_path) == ['new.md']
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


# A process SIGKILLed after writing half the new bytes.
_KILLED_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    from sosvae_jax import workdir
    real = workdir._write_bytes
    def half_then_killed(fd, data):
      real(fd, data[:len(data) // 2])
      os.kill(os.getpid(), signal.SIGKILL)
    workdir._write_bytes = half_then_killed
    workdir.write_atomic(sys.argv[1], 'new ' * 1000)
""")


@pytest.mark.parametrize('old', ['old, whole', None], ids=['existing', 'absent'])
def test_a_kill_mid_write_leaves_the_old_file_or_none(tmp_path, old):
  path = tmp_path / 'samples.npz'
  if old is not None:
    path.write_text(old)
  proc = subprocess.run([sys.executable, '-c', _KILLED_MID_WRITE, str(path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  if old is None:
    assert not path.exists()
  else:
    assert path.read_text() == old


# ---------------------------------------------------------------- evaluation
def _evaluation(value: float) -> results_lib.Evaluation:
  """A small evaluation as evaluate_run returns it (ELBO `value`)."""
  metrics = {'elbo': value, 'kl': 1.0, 'coherence_autocorrelation': 0.1,
             'coherence_white_noise_high_frequency_fraction': 0.5,
             'coherence_high_frequency_fraction': 0.4}
  results = {'metrics': metrics, 'workdir': 'run', 'step': 6, 'likelihood': 'lowrank',
             'discrete': False, 'sampler': 'prior', 'description': 'z ~ N(0, I)',
             'eval_examples': 8, 'num_samples': 4, 'iwae_k': 2, 'feature_networks': {},
             'notes': []}
  images = np.full((4, 8, 8, 1), value % 1, np.float32)
  return results_lib.Evaluation(results, None, {'means': images, 'samples': images})


def _files(folder) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


@pytest.mark.parametrize('name', ['results.json', 'samples_prior.png', 'samples.npz'])
def test_evaluation_files_stay_whole_when_the_disk_fills(tmp_path, monkeypatch, name):
  results_lib.write_results(str(tmp_path), _evaluation(-100.25))
  old = _files(tmp_path / 'eval')
  results_lib.write_results(str(tmp_path), _evaluation(-200.75))
  new = _files(tmp_path / 'eval')
  results_lib.write_results(str(tmp_path), _evaluation(-100.25))
  _full_disk(monkeypatch, name)
  with pytest.raises(workdir_lib.WriteError, match=name):
    results_lib.write_results(str(tmp_path), _evaluation(-200.75))
  after = _files(tmp_path / 'eval')
  assert set(after) == set(old)  # no temporary left
  assert after[name] == old[name]
  assert all(after[f] in (old[f], new[f]) for f in after)  # each file whole


# A command whose writes of the file named argv[1] meet a full disk half-way
# (argv[1] '-': none do).
_COMMAND_ON_A_FULL_DISK = textwrap.dedent("""
    import errno, importlib, os, sys
    from absl import app
    from sosvae_jax import workdir
    real = workdir._write_bytes
    def write_half_then_fail(fd, data):
      if not os.path.basename(os.readlink(f'/proc/self/fd/{fd}')).startswith(
          f'.{sys.argv[1]}.'):
        return real(fd, data)
      real(fd, data[:len(data) // 2])
      raise OSError(errno.ENOSPC, 'No space left on device')
    workdir._write_bytes = write_half_then_fail
    command = importlib.import_module(sys.argv[2])
    app.run(command.main, argv=[sys.argv[0]] + sys.argv[3:])
""")


def _command_on_a_full_disk(name: str, module: str, *args):
  return subprocess.run([sys.executable, '-c', _COMMAND_ON_A_FULL_DISK, name, module, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.slow
def test_report_command_ends_with_exit_5_and_keeps_the_old_report(tmp_path):
  # A subprocess: experiments.report's required flags, once imported, would
  # refuse every later in-process flag parse of the suite.
  runs = [tmp_path / 'a', tmp_path / 'b']
  for run in runs:
    results_lib.write_results(str(run), _evaluation(-100.25))
  out = tmp_path / 'report'
  args = ('experiments.report', f'--workdirs={runs[0]},{runs[1]}', f'--out={out}')
  first = _command_on_a_full_disk('-', *args)
  assert first.returncode == 0, first.stderr[-3000:]
  old = (out / 'report.md').read_bytes()
  results_lib.write_results(str(runs[0]), _evaluation(-300.5))
  full = _command_on_a_full_disk('report.md', *args)
  assert full.returncode == cli.WRITE_FAILED == 5, full.stderr[-3000:]
  assert (out / 'report.md').read_bytes() == old and _temporaries(tmp_path) == []
  assert f'Cannot write {out / "report.md"}: {ENOSPC_TEXT}' in full.stderr
  assert 'Traceback' not in full.stderr


def test_sweep_collect_ends_with_exit_5_and_keeps_the_old_plot(tmp_path, monkeypatch,
                                                               caplog):
  from experiments import sweep as command  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'sweep'
  with flagsaver.flagsaver():
    flags.FLAGS(['sweep', '--config=experiments/configs/default.py:smoke',
                 '--grid=seed=1,2', f'--workdir={root}', '--mode=print'])
    command.main(['sweep'])
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['sweep', f'--workdir={root}', 'collect'])
    with pytest.raises(SystemExit) as collected:
      command.main(['sweep', 'collect'])
    assert collected.value.code == 0
    old = _files(root)
    _full_disk(monkeypatch, 'sweep.png')
    with pytest.raises(SystemExit) as stopped:
      command.main(['sweep', 'collect'])
  assert stopped.value.code == cli.WRITE_FAILED
  assert _files(root) == old and _temporaries(tmp_path) == []
  assert f'Cannot write {root / "sweep.png"}: {ENOSPC_TEXT}' in caplog.text


# ------------------------------------------------------- append-only records
def test_metrics_survive_a_torn_last_line_and_a_full_disk(tmp_path, monkeypatch):
  writer = metric_writers.MetricWriter(str(tmp_path))
  for step in (2, 4):
    writer.write(step, {'loss': float(step)})
  path = tmp_path / metric_writers.METRICS_FILE
  with open(path, 'a') as f:
    f.write('{"step": 6, "split": "tr')  # killed mid-append
  assert [r['step'] for r in metric_writers.read_metrics(str(tmp_path))] == [2, 4]
  # The resumed run drops the torn line, whole or not at all.
  kept = path.read_bytes()
  _full_disk(monkeypatch, metric_writers.METRICS_FILE)
  with pytest.raises(workdir_lib.WriteError):
    metric_writers.MetricWriter(str(tmp_path)).drop_after(4)
  assert path.read_bytes() == kept and _temporaries(tmp_path) == []
  monkeypatch.undo()
  resumed = metric_writers.MetricWriter(str(tmp_path))
  resumed.drop_after(4)
  resumed.write(6, {'loss': 6.0})
  assert [r['step'] for r in metric_writers.read_metrics(str(tmp_path))] == [2, 4, 6]
  # An append on a full disk names the file.
  monkeypatch.setattr('builtins.open', lambda *a, **k: (_ for _ in ()).throw(
      OSError(errno.ENOSPC, ENOSPC_TEXT)))
  with pytest.raises(workdir_lib.WriteError, match=f'{path}: {ENOSPC_TEXT}'):
    resumed.write(8, {'loss': 8.0})


def test_a_launch_after_a_torn_launch_line_is_the_one_readers_use(tmp_path):
  config = {'num_steps': 10, 'seed': 0}
  workdir_lib.record_launch(str(tmp_path), json.dumps(config), 0)
  with open(tmp_path / workdir_lib.LAUNCHES_FILE, 'a') as f:
    f.write('{"time": "x", "step": 5, "chan')  # a launch killed mid-append
  workdir_lib.record_launch(str(tmp_path), json.dumps({**config, 'num_steps': 30}), 10)
  assert workdir_lib.effective_config(str(tmp_path))['num_steps'] == 30
  lines = (tmp_path / workdir_lib.LAUNCHES_FILE).read_text().splitlines()
  assert json.loads(lines[-1])['changes'] == {'num_steps': [10, 30]}


# ------------------------------------------------------------------ commands
# experiments.main training on mock data; orbax's save of step >= argv[1]
# raises what orbax raised on a full tmpfs (OSError ENOSPC, from the previous
# save's background thread, at the next save or wait).
_MAIN_WITH_A_FULL_CHECKPOINT_DISK = textwrap.dedent("""
    import errno, sys
    from absl import app
    import orbax.checkpoint as ocp
    import tensorflow_datasets as tfds
    from experiments import main
    real = ocp.CheckpointManager.save
    def save(self, step, *args, **kwargs):
      if step >= int(sys.argv[1]):
        raise OSError(errno.ENOSPC, 'No space left on device')
      return real(self, step, *args, **kwargs)
    ocp.CheckpointManager.save = save
    with tfds.testing.mock_data(num_examples=64):
      app.run(main.main, argv=[sys.argv[0]] + sys.argv[2:])
""")


@pytest.mark.slow  # a training in a subprocess: about a minute on 2 busy cores
def test_training_on_a_full_disk_ends_with_exit_5_and_keeps_the_last_checkpoint(tmp_path):
  from sosvae_jax import checkpoints  # pylint: disable=g-import-not-at-top
  # ':smoke' checkpoints at steps 3 and 6; the disk fills before step 6's.
  proc = subprocess.run(
      [sys.executable, '-c', _MAIN_WITH_A_FULL_CHECKPOINT_DISK, '6',
       '--config=experiments/configs/default.py:smoke', f'--workdir={tmp_path}',
       '--config.data.source=tfds'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == cli.WRITE_FAILED, proc.stderr[-3000:]
  assert (f'Cannot write a checkpoint to {tmp_path / "checkpoints"}: {ENOSPC_TEXT} '
          '(ENOSPC); the latest complete checkpoint, step 3, is kept') in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert checkpoints.restore_run(str(tmp_path)).step == 3


@pytest.mark.slow  # a whole tiny evaluation: about a minute on 2 busy cores
def test_evaluate_mode_on_a_full_disk_ends_with_exit_5(tmp_path, monkeypatch, caplog):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from sosvae_jax.evaluation import settings  # pylint: disable=g-import-not-at-top
  from sosvae_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from sosvae_jax import train  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  config.evaluation.update(
      num_samples=24, iwae_k=4, iwae_chunk=4, batch_size=16, mi_examples=20,
      mi_samples=2, coherence_examples=24, structure_examples=16,
      classifier_cache_dir=str(tmp_path / 'classifiers'))
  config.evaluation.classifier.num_steps = 5
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(config.to_json_best_effort(indent=2))
  manager = checkpoints.checkpoint_manager(str(run), config)
  checkpoints.save_checkpoint(manager, train.setup(config).state, 0)
  checkpoints.wait_for_saves(manager)
  manager.close()
  (run / 'eval').mkdir()
  (run / 'eval' / 'results.json').write_text('{"old": "whole"}')
  _full_disk(monkeypatch, 'results.json')
  # What experiments.main's --mode=evaluate runs; importing that module here
  # would define its flags a second time beside experiments.sweep's.
  with (tfds.testing.mock_data(num_examples=48), pytest.raises(SystemExit) as stopped,
        cli.write_failure_ends_quietly()):
    evaluate.evaluate_and_write(str(run), settings.from_config(config.evaluation))
  assert stopped.value.code == cli.WRITE_FAILED
  assert (run / 'eval' / 'results.json').read_text() == '{"old": "whole"}'
  assert _temporaries(tmp_path) == []
  assert f'Cannot write {run / "eval" / "results.json"}: {ENOSPC_TEXT}' in caplog.text
