"""Sweeps: grids, sweep files, names, groups, manifest, the command line, collect."""

import csv
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from experiments.configs import default
from experiments.configs import sos_basis
from experiments.configs.sigma_vae import beta_vae
from sosvae_jax import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = 'experiments/configs/sigma_vae/beta_vae.py:smoke'
TINY = ['--config.num_steps=2', '--config.eval_examples=16', '--config.num_figure_images=2',
        '--config.evaluation.num_samples=16', '--config.evaluation.eval_examples=16',
        '--config.evaluation.iwae_k=2', '--config.evaluation.iwae_chunk=2',
        '--config.evaluation.batch_size=8', '--config.evaluation.mi_examples=8',
        '--config.evaluation.mi_samples=2', '--config.evaluation.coherence_examples=8',
        '--config.evaluation.classifier_fid=false']
# Three points of one shape group: two seeds of one KL weight, one of another.
SWEEP_FILE = """
from sosvae_jax import sweep

def get_sweep():
  return (sweep.product(sweep.axis('kl_weight', [0.01]), sweep.axis('seed', [0, 1]))
          + [{'kl_weight': 0.1, 'seed': 0}])
"""
# The sweep command with point 2's training failing (an exception in the run).
FAILING_POINT = """
import sys
from absl import app
from experiments import sweep as command
from sosvae_jax import train
real = train.train_and_evaluate
def train_and_evaluate(config, workdir):
  if config.kl_weight == 0.1:
    raise RuntimeError('injected failure of this point')
  return real(config, workdir)
train.train_and_evaluate = train_and_evaluate
app.run(command.main, argv=[sys.argv[0]] + sys.argv[1:])
"""


def _config():
  config = beta_vae.get_config('smoke')
  config.lock()
  return config


def _run(*args, script=None):
  cmd = ([sys.executable, '-c', script] if script else
         [sys.executable, '-m', 'experiments.sweep']) + list(args)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


# ---------------------------------------------------------------- points ----
def test_grid_values_take_the_types_of_the_config_fields():
  points = sweep.grid_points(_config(), [
      'kl_weight=0.003,1', 'seed=0,2', 'model.channels=(4, 8),(8,16)',
      'constraints.kl.enabled=true,false', 'config.likelihood.name=gaussian_fixed_sigma'])
  assert len(points) == 2 * 2 * 2 * 2
  first = points[0]
  assert list(first) == ['kl_weight', 'seed', 'model.channels', 'constraints.kl.enabled',
                         'likelihood.name']
  assert first['kl_weight'] == 0.003 and isinstance(points[-1]['kl_weight'], float)
  assert points[-1]['kl_weight'] == 1.0
  # The first grid is the outermost loop.
  assert [p['seed'] for p in points[:8]] == [0] * 4 + [2] * 4 and points[8]['seed'] == 0
  assert first['model.channels'] == (4, 8) and points[2]['model.channels'] == (8, 16)
  assert first['constraints.kl.enabled'] is True and points[1]['constraints.kl.enabled'] is False
  assert sweep.split_top_level('1, (2, 3),[4,5]') == ['1', '(2, 3)', '[4,5]']


@pytest.mark.parametrize('grid, words', [
    ('kl_wieght=0.1', ['kl_wieght', 'kl_weight']),  # unknown field, with a suggestion
    ('seed=1,x', ['seed', "'x'", 'int']),
    ('kl_weight=0.1,abc', ['kl_weight', "'abc'", 'float']),
    ('kl_weight', ['FIELD=VALUE']),
    ('kl_weight=0.1,,0.2', ['FIELD=VALUE']),
])
def test_grid_errors_name_the_field_and_the_value(grid, words):
  with pytest.raises(sweep.SweepError) as e:
    sweep.grid_points(_config(), [grid])
  for word in words:
    assert word in str(e.value)


def test_a_bad_point_names_its_index_and_overrides(tmp_path):
  overrides = [{'seed': 1}, {'seed': 1.5}, {'model.latentdim': 3}]
  with pytest.raises(sweep.SweepError) as e:
    sweep.make_points(_config(), overrides, str(tmp_path))
  text = str(e.value)
  assert "point 1 {'seed': 1.5}" in text and 'seed' in text
  assert "point 2 {'model.latentdim': 3}" in text and 'latent_dim' in text
  assert 'point 0' not in text
  # A point that fails the config checks names itself too.
  points = sweep.make_points(_config(), [{'seed': 0}, {'optimizer.learning_rate': -1.0}],
                             str(tmp_path))
  with pytest.raises(sweep.SweepError) as e:
    sweep.check_points(points)
  assert 'point 1 (optimizer.learning_rate=-1.0)' in str(e.value)
  assert 'point 0' not in str(e.value)
  with pytest.raises(sweep.SweepError, match='same folder name'):
    sweep.make_points(_config(), [{'seed': 0}, {'seed': 0}], str(tmp_path))


def test_a_point_that_could_not_be_evaluated_is_refused_before_training(tmp_path):
  points = sweep.make_points(_config(), [{'evaluation.iwae_k': 4},
                                         {'evaluation.iwae_k': -1}], str(tmp_path))
  with pytest.raises(sweep.SweepError) as e:
    sweep.check_points(points)
  assert 'point 1 (evaluation.iwae_k=-1)' in str(e.value)
  assert 'config.evaluation.iwae_k=-1 must be >= 0' in str(e.value)
  assert 'point 0' not in str(e.value)


def test_product_and_zip():
  a, b = sweep.axis('x', [1, 2]), sweep.axis('y', ['p', 'q'])
  assert sweep.product(a, b) == [{'x': 1, 'y': 'p'}, {'x': 1, 'y': 'q'},
                                 {'x': 2, 'y': 'p'}, {'x': 2, 'y': 'q'}]
  assert sweep.zip(a, b) == [{'x': 1, 'y': 'p'}, {'x': 2, 'y': 'q'}]
  assert sweep.product() == [{}]
  with pytest.raises(sweep.SweepError, match='equal length'):
    sweep.zip(a, sweep.axis('y', [1]))


@pytest.mark.parametrize('path, config, arg, count, groups', [
    # The betas share one program; the optimal sigma-VAE is a second group.
    ('experiments/sweeps/beta_grid.py', beta_vae, None, (8 + 1) * 3, 2),
    ('experiments/sweeps/beta_grid.py', beta_vae, 'readme', 5 + 1, 2),
    ('experiments/sweeps/beta_grid.py', beta_vae, 'smoke', 2 + 1, 2),
    ('experiments/sweeps/mean_gradient.py', default, None, 2 * 3, 2),
    ('experiments/sweeps/mean_gradient.py', default, 'smoke', 2 * 2, 2),
    ('experiments/sweeps/entropy_budget.py', default, None, 5 * 3, 1),
    ('experiments/sweeps/entropy_budget.py', default, 'smoke', 2, 1),
    # The factor's source changes the parameter tree: one group per source.
    ('experiments/sweeps/structure.py', default, None, 2 * 2, 2),
    ('experiments/sweeps/structure.py', default, 'smoke', 2 * 2, 2),
    ('experiments/sweeps/seeds.py', sos_basis, None, 3, 1),
    ('experiments/sweeps/seeds.py', sos_basis, 'smoke', 2, 1),
])
def test_sweep_files_load_and_every_point_passes_the_checks(tmp_path, path, config, arg,
                                                           count, groups):
  spec = str(ROOT / path) + (f':{arg}' if arg else '')
  overrides = sweep.load_sweep_file(spec)
  assert len(overrides) == count
  base = config.get_config('smoke' if arg == 'smoke' else None)
  base.lock()
  points = sweep.make_points(base, overrides, str(tmp_path))
  sweep.check_points(points)
  assert len(sweep.group_points(points)) == groups


def test_a_point_may_switch_the_likelihood(tmp_path):
  overrides = [{'kl_weight': 0.01}, {'likelihood.name': 'gaussian_optimal_sigma',
                                     'likelihood.running_average_decay': 0.9}]
  points = sweep.make_points(_config(), overrides, str(tmp_path))
  sweep.check_points(points)
  fixed, optimal = (p.config.likelihood for p in points)
  assert fixed.name == 'gaussian_fixed_sigma' and 'running_average_decay' not in fixed
  # Shared fields keep the base config's value, the new head's own fields start
  # at its defaults and the point's overrides apply on top.
  assert optimal.name == 'gaussian_optimal_sigma' and 'sigma' not in optimal
  assert optimal.head_init_stddev == fixed.head_init_stddev
  assert optimal.optimal_sigma_axes == 'shared' and optimal.running_average_decay == 0.9
  fields = sweep.swept_fields(points)
  assert sweep.point_values(points[1], ['likelihood.sigma']) == {'likelihood.sigma': None}
  assert [g.fixed for g in sweep.group_points(points)] == [
      {'likelihood.name': 'gaussian_fixed_sigma',
       'likelihood.running_average_decay': None},
      {'likelihood.name': 'gaussian_optimal_sigma', 'likelihood.running_average_decay': 0.9}]
  assert 'likelihood.name' in fields
  with pytest.raises(sweep.SweepError, match="'no_such'.*gaussian_optimal_sigma"):
    sweep.make_points(_config(), [{'likelihood.name': 'no_such'}], str(tmp_path))


def test_point_names_fit_comma_separated_list_flags():
  name = sweep.point_name({'kl_weight': 0.01, 'model.channels': (8, 16), 'seed': 1})
  assert ',' not in name  # experiments.report --workdirs=A,B


def test_sweep_file_errors(tmp_path):
  with pytest.raises(sweep.SweepError, match='no file'):
    sweep.load_sweep_file(str(tmp_path / 'missing.py'))
  (tmp_path / 'bad.py').write_text('def get_sweep():\n  return {"seed": 1}\n')
  with pytest.raises(sweep.SweepError, match='list of override dicts'):
    sweep.load_sweep_file(str(tmp_path / 'bad.py'))


@pytest.mark.parametrize('source,spec_arg,words', [
    ('def get_sweep(:\n', '', ["fails at line 1 ('def get_sweep(:')", 'SyntaxError']),
    ('import math\ndef get_sweep():\n  return [{"seed": 1 / 0}]\n', '',
     ['fails at line 3', 'ZeroDivisionError: division by zero', 'fix the file']),
    ('def get_sweep():\n  return []\n', '', ['returned no points']),
    ('def get_sweep():\n  return [{}]\n', ':rank', ['takes no argument', "drop \":rank\""]),
    ('def get_sweep(which):\n  return [{}]\n', '', ['needs an argument', ':ARG']),
], ids=['syntax_error', 'raises', 'no_points', 'argument_not_taken', 'argument_missing'])
def test_sweep_file_mistakes_name_the_file_and_line(tmp_path, source, spec_arg, words):
  path = tmp_path / 'study.py'
  path.write_text(source)
  with pytest.raises(sweep.SweepError) as info:
    sweep.load_sweep_file(str(path) + spec_arg)
  for word in [f"--sweep='{path}{spec_arg}'", *words]:
    assert word in str(info.value), str(info.value)


def test_names_are_deterministic_sanitised_and_bounded():
  assert sweep.point_name({'kl_weight': 0.01, 'seed': 1}) == 'kl_weight=0.01+seed=1'
  assert sweep.point_name({}) == 'base'
  assert sweep.point_name({'model.channels': (8, 16), 'likelihood.name': 'a/b c',
                           'constraints.kl.enabled': False, 'likelihood.sigma': 1e-5}) == (
                               'model.channels=8_16+likelihood.name=a_b_c+'
                               'constraints.kl.enabled=false+likelihood.sigma=1e-05')
  long = {f'field_{i}': 0.123456789 for i in range(20)}
  name = sweep.point_name(long)
  assert len(name) == sweep.MAX_NAME_LENGTH and name == sweep.point_name(dict(long))
  assert name != sweep.point_name({**long, 'field_19': 0.5})
  # Values as the command line parses them back, exactly.
  assert sweep.format_value(0.1 + 0.2) == '0.30000000000000004'
  assert sweep.format_value((3,)) == '(3,)' and sweep.format_value(True) == 'true'


def test_groups_split_only_on_what_changes_shapes(tmp_path):
  overrides = sweep.grid_points(_config(), [
      'kl_weight=0.01,0.1', 'model.latent_dim=4,8', 'seed=0,1',
      'constraints.entropy.target=-3300,-3200'])
  points = sweep.make_points(_config(), overrides, str(tmp_path))
  groups = sweep.group_points(points)
  assert [dict(g.fixed) for g in groups] == [{'model.latent_dim': 4}, {'model.latent_dim': 8}]
  assert groups[0].varying == ('kl_weight', 'seed', 'constraints.entropy.target')
  for g in groups:
    assert len(g.points) == 8
    assert {points[i].config.model.latent_dim for i in g.points} == {g.fixed['model.latent_dim']}
  # What an engine stacking a group's points sees: only traced values differ.
  varying = sweep.varying_values([points[i] for i in groups[1].points])
  assert set(varying) == {'kl_weight', 'seed', 'constraints.entropy.target'}
  assert varying['seed'] == [0, 0, 1, 1, 0, 0, 1, 1]
  assert all(sweep.shares_program(f) for f in varying)
  assert 'model.latent_dim' in sweep.varying_values(points)
  assert sweep.shares_program('constraints.kl.damping')
  assert not sweep.shares_program('constraints.kl.enabled')
  assert not sweep.shares_program('batch_size') and not sweep.shares_program('likelihood.rank')
  text = sweep.describe_groups(groups)
  assert 'group 1: 8 point(s)' in text and 'fixed model.latent_dim=8' in text


def test_manifest_maps_index_to_overrides_and_is_kept_when_unchanged(tmp_path):
  points = sweep.make_points(_config(), sweep.grid_points(_config(), ['seed=3,4']),
                             str(tmp_path))
  content = sweep.manifest(BASE, {'num_steps': 2}, points, sweep.group_points(points))
  path = sweep.write_manifest(str(tmp_path), content)
  read = sweep.read_manifest(str(tmp_path))
  assert read['config'] == BASE and read['base_overrides'] == {'num_steps': 2}
  assert [(p['index'], p['overrides'], p['name']) for p in read['points']] == [
      (0, {'seed': 3}, 'seed=3'), (1, {'seed': 4}, 'seed=4')]
  assert read['groups'] == [{'index': 0, 'points': [0, 1], 'fixed': {}, 'varying': ['seed']}]
  # Rows that collect added survive a rerun of the same sweep.
  read['rows'] = ['collected']
  pathlib.Path(path).write_text(json.dumps(read))
  sweep.write_manifest(str(tmp_path), content)
  assert sweep.read_manifest(str(tmp_path))['rows'] == ['collected']
  other = sweep.manifest(BASE, {}, points[:1], sweep.group_points(points[:1]))
  sweep.write_manifest(str(tmp_path), other)
  assert 'rows' not in sweep.read_manifest(str(tmp_path))


@pytest.mark.parametrize('text', ['{"points": ', '[1, 2]'], ids=['torn', 'not_a_dict'])
def test_damaged_manifest_is_named_and_written_again_by_a_rerun(tmp_path, text):
  points = sweep.make_points(_config(), [{'seed': 3}], str(tmp_path))
  content = sweep.manifest(BASE, {}, points, sweep.group_points(points))
  path = pathlib.Path(sweep.write_manifest(str(tmp_path), content))
  path.write_text(text)
  with pytest.raises(sweep.SweepError, match=f'{path} is damaged.*--mode=print'):
    sweep.read_manifest(str(tmp_path))
  sweep.write_manifest(str(tmp_path), content)  # the sweep's command again
  assert sweep.read_manifest(str(tmp_path))['points'][0]['name'] == 'seed=3'


def test_mean_std_against_numpy():
  values = [1.5, -2.0, 4.25, float('nan')]
  mean, std, n = sweep.mean_std(values)
  np.testing.assert_allclose([mean, std], [np.mean(values[:3]), np.std(values[:3], ddof=1)],
                             rtol=1e-12)
  assert n == 3
  assert math.isnan(sweep.mean_std([2.0])[1]) and sweep.mean_std([])[2] == 0


# ---------------------------------------------------- the command line ----
def _last_eval(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return max((r for r in records if r['split'] == 'eval'), key=lambda r: r['step'])


def _checkpoint_times(root):
  return {str(p): p.stat().st_mtime_ns for p in pathlib.Path(root).glob('*/checkpoints/*')}


@pytest.mark.slow
def test_print_run_fail_index_rerun_and_collect(tmp_path):
  sweep_file = tmp_path / 'three.py'
  sweep_file.write_text(SWEEP_FILE)
  root = tmp_path / 'sweep'
  flags = [f'--config={BASE}', *TINY, f'--sweep={sweep_file}', f'--workdir={root}']
  names = ['kl_weight=0.01+seed=0', 'kl_weight=0.01+seed=1', 'kl_weight=0.1+seed=0']

  # --mode=print: one runnable command per point, nothing trained.
  printed = _run(*flags, '--mode=print')
  assert printed.returncode == 0, printed.stderr[-3000:]
  commands = [l for l in printed.stdout.splitlines() if l.startswith('python -m')]
  assert len(commands) == 3 and '1 shape group(s)' in printed.stdout
  args = shlex.split(commands[1])
  assert args[:4] == ['python', '-m', 'experiments.main', f'--config={BASE}']
  assert args[4] == f'--workdir={root / names[1]}'
  assert args[5:] == [*TINY, '--config.kl_weight=0.01', '--config.seed=1']
  manifest = json.loads((root / 'sweep.json').read_text())
  assert [p['name'] for p in manifest['points']] == names
  assert not any((root / n).exists() for n in names)
  collected = sweep.collect(str(root))
  assert [r['status'] for r in collected['rows']] == ['not started'] * 3

  # The printed command of point 0 is an ordinary run.
  alone = subprocess.run([sys.executable] + shlex.split(commands[0])[1:], cwd=ROOT,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert alone.returncode == 0, alone.stderr[-3000:]

  # Sequential: point 0 is skipped, point 1 trains, point 2 fails without
  # stopping the others; the exit code says so.
  before = _checkpoint_times(root)
  failing = _run(*flags, '--mode=sequential', script=FAILING_POINT)
  assert failing.returncode == 1, failing.stderr[-3000:]
  assert _checkpoint_times(root).items() >= before.items()  # point 0 untouched
  assert (root / names[1] / 'checkpoints' / '2').is_dir()
  status = json.loads((root / names[2] / sweep.POINT_STATUS).read_text())
  assert status['status'] == 'failed' and 'injected failure' in status['message']
  rows = {r['index']: r for r in json.loads((root / 'sweep.json').read_text())['rows']}
  assert [rows[i]['status'] for i in range(3)] == ['finished', 'finished', 'failed']
  assert 'injected failure of this point' in rows[2]['message']
  assert rows[2]['metrics'] == {}

  # --index=2 runs that point alone (as one task of a Slurm array would),
  # here with the evaluation command after training.
  one = _run(*flags, '--index=2', '--evaluate')
  assert one.returncode == 0, one.stderr[-3000:]
  assert (root / names[2] / 'checkpoints' / '2').is_dir()
  evaluated = json.loads((root / names[2] / 'eval' / 'results.json').read_text())
  assert evaluated['step'] == 2 and evaluated['eval_examples'] == 16
  assert not (root / names[0] / 'eval').exists()

  # The same command again trains nothing.
  before = _checkpoint_times(root)
  again = _run(*flags)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _checkpoint_times(root) == before
  assert again.stdout.count('| finished |') == 3

  # collect: tables against the runs' own metrics.jsonl (and the evaluation
  # command's results where it ran), and the plot.
  again = _run(f'--workdir={root}', '--metrics=elbo,kl', 'collect')
  assert again.returncode == 0, again.stderr[-3000:]
  result = json.loads((root / 'sweep.json').read_text())
  finals = [_last_eval(root / n) for n in names[:2]]
  finals.append({'step': 2, **evaluated['metrics']})
  with open(root / 'sweep.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['name'] for r in table] == names
  assert [r['kl_weight'] for r in table] == ['0.01', '0.01', '0.1']
  assert [r['seed'] for r in table] == ['0', '1', '0']
  assert [r['status'] for r in table] == ['finished'] * 3
  assert [r['metrics_source'] for r in table] == ['metrics.jsonl'] * 2 + ['eval/results.json']
  for row, final in zip(table, finals):
    assert int(row['step']) == final['step'] == 2
    np.testing.assert_allclose(float(row['elbo']), final['elbo'], rtol=1e-12)
    np.testing.assert_allclose(float(row['kl']), final['kl'], rtol=1e-12)
  np.testing.assert_allclose(float(table[0]['mse']), finals[0]['mse'], rtol=1e-12)
  np.testing.assert_allclose(float(table[2]['iwae']), finals[2]['iwae'], rtol=1e-12)
  grouped = {g['kl_weight']: g for g in result['grouped']}
  assert set(grouped) == {0.01, 0.1} and grouped[0.01]['finished'] == 2
  for metric in ('elbo', 'kl'):
    seeds = [finals[0][metric], finals[1][metric]]
    np.testing.assert_allclose(grouped[0.01][metric]['mean'], np.mean(seeds), rtol=1e-12)
    np.testing.assert_allclose(grouped[0.01][metric]['std'], np.std(seeds, ddof=1), rtol=1e-9)
    assert grouped[0.01][metric]['n'] == 2 and grouped[0.1][metric]['n'] == 1
    np.testing.assert_allclose(grouped[0.1][metric]['mean'], finals[2][metric], rtol=1e-12)
  text = (root / 'sweep.md').read_text()
  assert f'{np.mean([f["elbo"] for f in finals[:2]]):.6g} +/- ' in text
  assert '| kl_weight | finished / points | elbo | kl |' in text
  # One panel per metric (rows) and per swept field but the seed (columns).
  with Image.open(root / 'sweep.png') as image:
    assert image.size == (sweep.PANEL_WIDTH, 2 * sweep.PANEL_HEIGHT)
    pixels = np.asarray(image.convert('RGB'))
  assert (pixels != 255).any(axis=-1).mean() > 0.01  # something is drawn
  assert json.loads((root / 'sweep.json').read_text())['metrics'] == ['elbo', 'kl']


@pytest.mark.slow
def test_cli_refuses_a_bad_grid_before_running(tmp_path):
  result = _run(f'--config={BASE}', '--grid=kl_weight=0.1,oops', f'--workdir={tmp_path}')
  assert result.returncode == 2
  assert "config.kl_weight='oops'" in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'sweep.json').exists()
  result = _run(f'--config={BASE}', '--grid=seed=0,1', '--index=5', f'--workdir={tmp_path}')
  assert result.returncode == 2 and 'points 0..1' in result.stderr


def test_status_of_a_point_from_its_workdir(tmp_path):
  def workdir(name, steps=(), evals=(), record=None):
    path = tmp_path / name
    path.mkdir()
    for step in steps:
      (path / 'checkpoints' / str(step)).mkdir(parents=True)
    if evals:
      (path / 'metrics.jsonl').write_text(''.join(
          json.dumps({'step': s, 'split': 'eval', 'elbo': e}) + '\n' for s, e in evals))
    if record:
      (path / sweep.POINT_STATUS).write_text(json.dumps(record))
    metrics, step, _ = sweep.final_metrics(str(path))
    return (*sweep.point_status(str(path), 4, metrics), step)

  failed = {'status': 'failed', 'stage': 'train', 'message': 'boom'}
  assert workdir('fresh')[:2] == ('not started', '')
  assert workdir('half', steps=[2], evals=[(2, -5.0)])[0] == 'unfinished'
  assert workdir('failed', record=failed)[:2] == ('failed', 'boom')
  # A later successful run wins over an old failure record.
  assert workdir('redone', steps=[2, 4], evals=[(2, -5.0), (4, -4.0)], record=failed) == (
      'finished', '', 4)
  status, message, _ = workdir('nan', steps=[4], evals=[(4, 'nan')])  # metric_writers' NaN
  assert status == 'non-finite' and 'elbo' in message
  stopped = {'status': 'non-finite', 'stage': 'train', 'message': 'too many'}
  assert workdir('stopped', steps=[2], evals=[(2, -5.0)], record=stopped)[:2] == (
      'non-finite', 'too many')
  evaluation = {'status': 'failed', 'stage': 'evaluate', 'message': 'evaluation: x'}
  assert workdir('evalfail', steps=[4], evals=[(4, -4.0)], record=evaluation)[:2] == (
      'failed', 'evaluation: x')
