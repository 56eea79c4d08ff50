"""Every user mistake at every command line: exit code 2, one message, no traceback."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from sosvae_jax import input_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = '--config=experiments/configs/default.py:smoke'


def _command(module, *args):
  """(returncode, stderr) of `python -m module args` on the CPU."""
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  return proc.returncode, proc.stderr


def _assert_user_error(result, *parts):
  code, err = result
  assert code == 2, f'exit code {code}:\n{err[-3000:]}'
  assert 'Traceback' not in err, err[-3000:]
  for part in parts:
    assert part in err, f'{part!r} not in:\n{err[-3000:]}'


def _idx_folder(tmp_path, cut: bool):
  """The two image files of Fashion-MNIST, tiny; the training one cut short."""
  for name, n in (('train-images-idx3-ubyte', 64), ('t10k-images-idx3-ubyte', 16)):
    header = bytes([0, 0, 8, 3]) + b''.join(int(v).to_bytes(4, 'big') for v in (n, 28, 28))
    raw = gzip.compress(header + bytes(n * 28 * 28))
    if cut and name.startswith('train'):
      raw = raw[:len(raw) // 2]
    (tmp_path / (name + '.gz')).write_bytes(raw)
  return tmp_path


# ------------------------------------------------------------- flags, configs
@pytest.mark.parametrize('args,parts', [
    (['--config=experiments/configs/default.py:smok'], ["'smok' is unknown", 'valid: smoke']),
    ([SMOKE, '--config.likelihood.rnk=3'], ['config.likelihood.rnk', 'rank']),
    ([SMOKE, '--config.num_steps=abc'], ['--config.num_steps=abc']),
    (['--config=experiments/configs/nope.py'], ['experiments/configs/nope.py',
                                                'No such file']),
    # ':smoke' pretrains for 2 steps.
    ([SMOKE, '--config.num_steps=2'], ['config.pretrain_steps', 'never train']),
    # Refused at launch, not when the trained run is evaluated.
    ([SMOKE, '--config.evaluation.iwae_k=-1'], ['config.evaluation.iwae_k=-1 must be >= 0']),
    ([SMOKE, '--mode=check', '--config.evaluation.sampler=flow'],
     ["config.evaluation.sampler='flow': choose one of ('prior', 'gmm')"]),
], ids=['config_argument_typo', 'unknown_field', 'bad_value', 'missing_config_file',
        'pretraining_whole_run', 'evaluation_setting', 'evaluation_setting_dry_run'])
@pytest.mark.slow
def test_train_config_mistakes(tmp_path, args, parts):
  _assert_user_error(_command('experiments.main', f'--workdir={tmp_path / "run"}', *args),
                     *parts)
  assert not (tmp_path / 'run' / 'checkpoints').exists()


# ------------------------------------------------------------------- data
def test_truncated_idx_file(tmp_path):
  (tmp_path / 'idx').mkdir()
  folder = _idx_folder(tmp_path / 'idx', cut=True)
  _assert_user_error(
      _command('experiments.main', SMOKE, f'--workdir={tmp_path / "run"}',
               f'--config.data.idx_dir={folder}'),
      f'{folder}/train-images-idx3-ubyte[.gz]', 'EOFError', '--config.data.idx_dir')


@pytest.mark.slow
def test_image_folder_with_a_broken_and_a_wrongly_sized_file(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(20):
    Image.fromarray(np.full((28, 28), i, np.uint8)).save(folder / f'{i:02d}.png')
  (folder / '98.png').write_bytes(b'not a png')
  args = [SMOKE, f'--workdir={tmp_path / "run"}', '--config.data.source=folder',
          f'--config.data.folder_dir={folder}']
  _assert_user_error(_command('experiments.main', *args), f'{folder}/98.png', 'delete or replace')
  (folder / '98.png').unlink()
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / '99.png')
  _assert_user_error(_command('experiments.main', *args), f'{folder}/99.png', '32x32',
                     '28x28')


# ---------------------------------------------------------------- workdirs
def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'run').write_text('')
  _assert_user_error(_command('experiments.main', SMOKE, f'--workdir={tmp_path / "run"}'),
                     'is a file, not a folder')


@pytest.mark.slow
def test_evaluate_figures_and_report_of_a_folder_that_is_no_run(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  _assert_user_error(_command('experiments.main', '--mode=evaluate', f'--workdir={empty}'),
                     'config.json not found')
  _assert_user_error(_command('experiments.figures', f'--workdir={empty}'),
                     'config.json not found')
  _assert_user_error(_command('experiments.report', f'--workdirs={empty}',
                              f'--out={tmp_path / "report"}'),
                     'results.json not found', '--mode=evaluate')
  _assert_user_error(_command('experiments.report', f'--workdirs={tmp_path / "absent"}',
                              f'--out={tmp_path / "report"}'), 'is not a folder')


@pytest.mark.slow
def test_evaluate_and_figures_of_a_run_without_checkpoints(tmp_path):
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  workdir_lib.record_launch(str(run), default.get_config('smoke').to_json_best_effort(), 0)
  _assert_user_error(_command('experiments.main', '--mode=evaluate', f'--workdir={run}'),
                     'No checkpoint under', 'train first')
  _assert_user_error(_command('experiments.figures', f'--workdir={run}'),
                     'No checkpoint under', 'train first')


def test_second_run_in_a_locked_workdir(tmp_path):
  from sosvae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  with workdir_lib.WorkdirLock(str(tmp_path)):
    _assert_user_error(_command('experiments.main', SMOKE, f'--workdir={tmp_path}'),
                       'is in use by a run that is still going', f'pid {os.getpid()} on')
  assert not (tmp_path / 'config.json').exists()


# ------------------------------------------------------- more entry points
@pytest.mark.slow
def test_bad_local_device_ids(tmp_path):
  run = f'--workdir={tmp_path / "run"}'
  _assert_user_error(_command('experiments.main', SMOKE, run, '--local_device_ids=a'),
                     "--local_device_ids=a: 'a' is not a device number")
  # Without a multi-process run the flag would be ignored: refuse it.
  _assert_user_error(_command('experiments.main', SMOKE, run, '--local_device_ids=0'),
                     '--local_device_ids=0 applies to a multi-process run only')
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_damaged_config_json(tmp_path):
  """A run whose config.json is torn: resume, evaluate and figures name the file."""
  from sosvae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  run.mkdir()
  (run / workdir_lib.CONFIG_FILE).write_text('{"seed": ')
  for module, *args in (('experiments.main', SMOKE), ('experiments.main', '--mode=evaluate'),
                        ('experiments.figures',)):
    _assert_user_error(_command(module, *args, f'--workdir={run}'),
                       f'{run}/config.json is damaged', 'new --workdir')


@pytest.mark.parametrize('edit,parts', [
    (lambda c: c['likelihood'].update(rank='three'), ["config.likelihood.rank='three'"]),
    (lambda c: c.pop('likelihood'), ['config.likelihood: the section is missing']),
], ids=['bad_value', 'missing_section'])
@pytest.mark.slow
def test_hand_edited_config_json_that_describes_no_model(tmp_path, edit, parts):
  """Evaluation and figures name config.json instead of failing inside the model."""
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  config = json.loads(default.get_config('smoke').to_json_best_effort())
  edit(config)
  workdir_lib.record_launch(str(run), json.dumps(config), 0)
  for module, *args in (('experiments.main', '--mode=evaluate'), ('experiments.figures',)):
    _assert_user_error(_command(module, *args, f'--workdir={run}'),
                       f'{run}/config.json', 'describes no model', 'restore the file', *parts)


@pytest.mark.parametrize('args,parts', [
    (['--num_samples=0'], ['--num_samples=0', 'not a positive integer']),
    (['--ppca_examples=-1'], ['--ppca_examples=-1', 'not a positive integer']),
    (['--example=8'], ['example=8, num_samples=8', 'must be below --num_samples']),
], ids=['no_samples', 'negative_ppca_examples', 'example_beyond_samples'])
@pytest.mark.slow
def test_figures_flag_mistakes(tmp_path, args, parts):
  _assert_user_error(_command('experiments.figures', f'--workdir={tmp_path}', *args), *parts)


@pytest.mark.slow
def test_figures_of_a_file_or_into_a_file(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  _assert_user_error(_command('experiments.figures', f'--workdir={a_file}'),
                     f'{a_file}/config.json not found')
  _assert_user_error(_command('experiments.figures', f'--workdir={tmp_path / "absent"}'),
                     'config.json not found')
  assert not (tmp_path / 'absent').exists()  # nothing created in a folder that is no run
  _assert_user_error(_command('experiments.figures', f'--workdir={tmp_path}',
                              f'--out={a_file}'), f"--out='{a_file}' is a file")


@pytest.mark.slow
def test_figures_and_report_into_a_folder_that_cannot_be_created(tmp_path):
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  workdir_lib.record_launch(str(run), default.get_config('smoke').to_json_best_effort(), 0)
  (run / 'eval').mkdir()
  (run / 'eval' / 'results.json').write_text('{"metrics": {}}')
  out = tmp_path / ('x' * 300)  # longer than a file name may be
  for module, *args in (('experiments.figures', f'--workdir={run}'),
                        ('experiments.report', f'--workdirs={run}')):
    _assert_user_error(_command(module, *args, f'--out={out}'),
                       f"--out='{out}' cannot be created", 'pass a folder you can write to')


def _untrained_run(run):
  """config.json and a step-0 checkpoint of the smoke config (no training)."""
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import checkpoints, train  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  run.mkdir()
  (run / 'config.json').write_text(config.to_json_best_effort())
  manager = checkpoints.checkpoint_manager(str(run), config)
  assert checkpoints.save_checkpoint(manager, train.setup(config).state, 0)
  manager.wait_until_finished()
  manager.close()
  return run


@pytest.mark.slow
def test_config_json_edited_into_another_model_than_its_checkpoints(tmp_path):
  run = _untrained_run(tmp_path / 'run')
  config = json.loads((run / 'config.json').read_text())
  config['model']['latent_dim'] += 1
  (run / 'config.json').write_text(json.dumps(config))
  _assert_user_error(_command('experiments.figures', f'--workdir={run}'),
                     'holds another model than', f'{run}/config.json',
                     'was config.json edited? Restore it')


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(input_pipeline.DEFAULT_IDX_DIR),
                    reason='Debian dataset-fashion-mnist not installed')
def test_classifier_cache_that_cannot_be_created_stops_before_training_it(tmp_path):
  run = _untrained_run(tmp_path / 'run')
  cache = tmp_path / ('x' * 300)  # longer than a file name may be
  # Settings of its own: the shipped classifier of the default settings does not apply.
  code, err = _command('experiments.main', '--mode=evaluate', f'--workdir={run}', SMOKE,
                       f'--config.evaluation.classifier_cache_dir={cache}',
                       '--config.evaluation.classifier.num_steps=5')
  _assert_user_error((code, err), f"--config.evaluation.classifier_cache_dir='{cache}' "
                     'cannot be created')
  assert 'Feature classifier training' not in err


@pytest.mark.parametrize('text', ['{}', '[]', '{"metrics": {"elbo": 1.0}}'])
def test_report_of_results_that_hold_no_evaluation(tmp_path, text):
  (tmp_path / 'run' / 'eval').mkdir(parents=True)
  (tmp_path / 'run' / 'eval' / 'results.json').write_text(text)
  _assert_user_error(_command('experiments.report', f'--workdirs={tmp_path / "run"}',
                              f'--out={tmp_path / "report"}'),
                     f'{tmp_path}/run/eval/results.json holds no evaluation',
                     '--mode=evaluate')


@pytest.mark.slow
def test_config_file_without_get_config(tmp_path):
  for module, *args in (('experiments.main', f'--workdir={tmp_path / "run"}'),
                        ('experiments.sweep', f'--workdir={tmp_path / "sweep"}',
                         '--grid=seed=1,2', '--mode=print')):
    _assert_user_error(_command(module, '--config=experiments/cli.py', *args),
                       '--config=experiments/cli.py: the file defines no get_config()')


_FAILING_CONFIGS = {
    'raises_on_import': ('import ml_collections\nraise RuntimeError("boom")\n',
                         ["fails at line 2 ('raise RuntimeError(\"boom\")')",
                          'RuntimeError: boom']),
    'syntax_error': ('def get_config(:\n', ["fails at line 1 ('def get_config(:')",
                                             'SyntaxError']),
    'get_config_raises': ('import ml_collections\ndef get_config():\n'
                          '  return ml_collections.ConfigDict().missing\n',
                          ['fails at line 3', 'AttributeError']),
}


@pytest.mark.slow
@pytest.mark.parametrize('module,case', [
    ('experiments.main', 'raises_on_import'), ('experiments.main', 'syntax_error'),
    ('experiments.main', 'get_config_raises'), ('experiments.sweep', 'syntax_error')])
def test_config_file_that_fails_to_load_names_its_line(tmp_path, module, case):
  source, parts = _FAILING_CONFIGS[case]
  path = tmp_path / 'mine.py'
  path.write_text(source)
  _assert_user_error(_command(module, f'--config={path}', f'--workdir={tmp_path / "run"}',
                              '--grid=seed=1,2' if module == 'experiments.sweep' else '--mode=check'),
                     f'--config={path}: the config file', *parts, 'fix the file')


@pytest.mark.slow
def test_sweep_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'sweep').write_text('')
  _assert_user_error(_command('experiments.sweep', SMOKE, f'--workdir={tmp_path / "sweep"}',
                              '--grid=seed=1,2', '--mode=print'), 'is a file, not a folder')


def test_ctrl_c_in_a_reading_command_ends_with_one_line(capsys):
  from experiments import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as stopped:
    with cli.interrupt_ends_quietly('evaluating'):
      raise KeyboardInterrupt
  assert stopped.value.code == cli.INTERRUPTED == 130
  with cli.interrupt_ends_quietly('evaluating'):
    pass  # no interrupt: nothing happens
