"""Evaluation command and report on a smoke run's checkpoint (tfds mock data)."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from experiments.configs import default
from sosvae_jax import checkpoints
from sosvae_jax import plotting
from sosvae_jax import train
from sosvae_jax.evaluation import classifier
from sosvae_jax.evaluation import evaluate
from sosvae_jax.evaluation import report
from sosvae_jax.evaluation import structure

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 48
# A tiny evaluation; both runs share one cached classifier.
TINY = dict(num_samples=24, iwae_k=4, iwae_chunk=4, batch_size=16, mi_examples=20,
            mi_samples=2, gmm_examples=40, coherence_examples=24, structure_examples=16)
CLI_FLAGS = ['--config=experiments/configs/default.py', '--config.evaluation.iwae_k=4',
             '--config.evaluation.iwae_chunk=4', '--config.evaluation.batch_size=16',
             '--config.evaluation.mi_examples=20', '--config.evaluation.classifier.num_steps=5']


def _untrained_run(workdir, config):
  """config.json and a step-0 checkpoint of a freshly initialised model.

  Evaluation only needs a restorable run; training it first would triple this
  file's run time on CPU and test nothing more here (test_main trains).
  """
  state = train.setup(config).state
  os.makedirs(workdir)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  manager = checkpoints.checkpoint_manager(str(workdir), config)
  assert checkpoints.save_checkpoint(manager, state, 0)
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A run evaluated with the prior; a copy of it then evaluated with the GMM sampler."""
  root = tmp_path_factory.mktemp('eval')
  prior_dir, gmm_dir, cache = root / 'sos_prior', root / 'sos_gmm', root / 'classifiers'
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  _untrained_run(prior_dir, config)
  settings = dict(classifier_cache_dir=str(cache),
                  classifier=classifier.ClassifierSettings(num_steps=5), **TINY)
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    evaluate.evaluate_and_write(str(prior_dir), **settings)
    shutil.copytree(prior_dir, gmm_dir)  # with the prior's evaluation
    gmm_results = evaluate.evaluate_and_write(str(gmm_dir), sampler='gmm',
                                              gmm_components=3, **settings)
  return prior_dir, gmm_dir, gmm_results


@pytest.mark.slow
def test_cli_flags_reach_the_evaluation(runs, tmp_path):
  """--mode=evaluate reads config.evaluation overrides; bad ones exit 2 with one line.

  (The evaluation itself is the fixture's; a second full run in a subprocess
  would double this file's time.)
  """
  prior_dir, _, _ = runs
  cmd = [sys.executable, '-m', 'experiments.main', '--mode=evaluate',
         f'--workdir={prior_dir}', *CLI_FLAGS, '--config.evaluation.num_samples=1',
         f'--config.evaluation.inception_weights={tmp_path / "missing.npz"}']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'num_samples=1' in result.stderr and 'missing.npz' in result.stderr
  assert 'pt_inception-2015-12-05' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.slow
def test_writes_finite_results(runs):
  prior_dir, _, _ = runs
  results = json.loads((prior_dir / 'eval' / 'results.json').read_text())
  m = results['metrics']
  assert results['sampler'] == 'prior' and results['step'] == 0
  assert results['eval_examples'] == NUM_EXAMPLES and results['num_samples'] == 24
  for key in ('elbo', 'kl', 'iwae', 'mse_means', 'nll_iwae_bits_per_dim',
              'mutual_information', 'marginal_kl', 'fid_classifier_means',
              'fid_classifier_samples', 'coherence_autocorrelation'):
    assert math.isfinite(m[key]), key
  assert not any(k.startswith('fid_inception') for k in m)
  assert m['nll_elbo_nats'] == -m['elbo'] and 0 <= m['mse_means'] <= 1
  assert m['mutual_information'] <= m['mutual_information_bound'] == pytest.approx(math.log(20))
  assert m['fid_classifier_means'] >= 0 and m['fid_classifier_samples'] >= 0
  markdown = (prior_dir / 'eval' / 'results.md').read_text()
  assert 'classifier FID (not Inception FID)' in markdown and '**prior**' in markdown
  assert 'p(x\\|z)' in markdown  # pipes escaped inside the tables
  assert (prior_dir / 'eval' / 'samples.png').exists()
  # A copy per sampler, so that a later --sampler=gmm keeps these results.
  assert json.loads((prior_dir / 'eval' / 'results_prior.json').read_text()) == results
  assert (prior_dir / 'eval' / 'results_prior.md').read_text() == markdown


@pytest.mark.slow
def test_gmm_sampler_and_shared_classifier(runs):
  prior_dir, gmm_dir, results = runs
  assert results['sampler'] == 'gmm' and results['gmm_components'] == 3
  mixture = json.loads((gmm_dir / 'eval' / 'gmm.json').read_text())
  assert len(mixture['weights']) == 3 and abs(sum(mixture['weights']) - 1) < 1e-9
  prior = json.loads((prior_dir / 'eval' / 'results.json').read_text())
  assert (prior['feature_networks']['classifier']['path']
          == results['feature_networks']['classifier']['path'])
  # Same checkpoint, data and seed: the likelihood metrics do not depend on the sampler.
  assert results['metrics']['elbo'] == pytest.approx(prior['metrics']['elbo'], rel=1e-6)


@pytest.mark.slow
def test_report_combines_runs(runs, tmp_path):
  prior_dir, gmm_dir, _ = runs
  paths = report.write_report([str(prior_dir), str(gmm_dir)], str(tmp_path / 'report'))
  markdown = pathlib.Path(paths['markdown']).read_text()
  rows = [line for line in markdown.splitlines() if line.startswith('| sos_')]
  assert [r.split('|')[1].strip() for r in rows] == ['sos_prior', 'sos_gmm']
  assert 'classifier FID means' in markdown and 'classifier FID samples' in markdown
  assert 'DIFFERENT feature classifiers' not in markdown
  header = markdown.splitlines()[2].split('|')
  pr_column = [h.strip() for h in header].index('PR of P')
  results = json.loads((prior_dir / 'eval' / 'results.json').read_text())
  assert float(rows[0].split('|')[pr_column]) == pytest.approx(
      results['metrics']['structure_participation_ratio'], rel=1e-3)
  image = np.asarray(Image.open(paths['png']))
  # Two runs side by side, each its images wrapped into labelled rows of
  # SAMPLE_COLUMNS (a mean row above its sample row).
  with np.load(prior_dir / 'eval' / 'samples.npz') as data:
    num, height, width = data['means'].shape[:3]
  panel = plotting.grid([np.zeros((report.SAMPLE_COLUMNS, height, width, 3))] *
                        (2 * -(-num // report.SAMPLE_COLUMNS)), ['mean'])
  assert image.shape[0] == panel.shape[0] + report.TITLE_HEIGHT
  assert image.shape[1] == 2 * (panel.shape[1] + report.GAP)


def test_samples_figure_fits_readme_width(tmp_path):
  """Six runs of ten 28x28 images: a grid about 800 pixels wide, not a strip."""
  rng = np.random.default_rng(0)
  workdirs = []
  for i in range(6):
    eval_dir = tmp_path / f'run{i}' / 'eval'
    eval_dir.mkdir(parents=True)
    np.savez(eval_dir / 'samples.npz', means=rng.uniform(size=(10, 28, 28, 1)),
             samples=rng.uniform(size=(10, 28, 28, 1)))
    workdirs.append(str(tmp_path / f'run{i}'))
  image = report.samples_figure(workdirs, report.run_names(workdirs))
  height, width = image.shape[:2]
  assert width <= 900 and height <= 2 * width, image.shape


def test_bits_per_dim_known_answers():
  num_dims = 784
  assert evaluate.bits_per_dim(-3 * num_dims * math.log(2), num_dims, True) == pytest.approx(3)
  # A density adds log2(255): bins of width 1/255 around each level k / 255.
  assert evaluate.bits_per_dim(-3 * num_dims * math.log(2), num_dims, False) == pytest.approx(
      3 + math.log2(255))


@pytest.mark.slow
def test_bad_requests_are_explained(runs, tmp_path):
  prior_dir, _, _ = runs
  with pytest.raises(ValueError, match=r"inception_weights='/no/such.npz'.*pt_inception"):
    evaluate.evaluate_run(str(prior_dir), inception_weights='/no/such.npz')
  with pytest.raises(ValueError, match='num_samples=1'):
    evaluate.evaluate_run(str(prior_dir), num_samples=1)
  with pytest.raises(FileNotFoundError, match='--mode=evaluate'):
    report.write_report([str(prior_dir), str(tmp_path)], str(tmp_path / 'r'))


@pytest.mark.slow
def test_gmm_evaluation_keeps_the_prior_results(runs, tmp_path):
  prior_dir, gmm_dir, gmm_results = runs
  prior = json.loads((prior_dir / 'eval' / 'results.json').read_text())
  # gmm_dir was evaluated with the prior, then with the mixture: both are kept.
  assert json.loads((gmm_dir / 'eval' / 'results_prior.json').read_text()) == prior
  assert json.loads((gmm_dir / 'eval' / 'results_gmm.json').read_text())['sampler'] == 'gmm'
  assert json.loads((gmm_dir / 'eval' / 'results.json').read_text())['sampler'] == 'gmm'
  for sampler in ('prior', 'gmm'):
    paths = report.write_report([str(gmm_dir)], str(tmp_path / sampler), sampler=sampler)
    row = next(line for line in pathlib.Path(paths['markdown']).read_text().splitlines()
               if line.startswith('| sos_gmm'))
    assert row.split('|')[3].strip() == sampler
    with np.load(gmm_dir / 'eval' / f'samples_{sampler}.npz') as data:
      assert data['samples'].shape[0] > 0
  # A sampler the run was never evaluated with: one message naming the command.
  with pytest.raises(FileNotFoundError, match='evaluation.sampler=gmm'):
    report.write_report([str(prior_dir)], str(tmp_path / 'none'), sampler='gmm')


@pytest.mark.slow
def test_tensorboard_gets_results_and_hparams(runs):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  _, gmm_dir, gmm_results = runs
  events = []
  for path in sorted((gmm_dir / 'tensorboard').glob('**/events.*')):
    data, pos = path.read_bytes(), 0
    while pos < len(data):  # TFRecord: length, crc, event, crc
      length = int.from_bytes(data[pos:pos + 8], 'little')
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  scalars = {v.tag: v.simple_value for e in events for v in e.summary.value
             if v.HasField('simple_value')}
  for sampler in ('prior', 'gmm'):  # both evaluations of the workdir
    assert f'eval/{sampler}/elbo' in scalars and f'eval/{sampler}/fid_classifier_samples' in scalars
  assert scalars['eval/gmm/elbo'] == pytest.approx(gmm_results['metrics']['elbo'], rel=1e-6)
  plugin = [v for e in events for v in e.summary.value
            if v.metadata.plugin_data.plugin_name == 'hparams']
  assert plugin
  content = b''.join(v.metadata.plugin_data.content for v in plugin)
  assert b'likelihood.name' in content and b'lowrank_gaussian' in content


@pytest.mark.slow
def test_low_rank_runs_report_their_structure(runs):
  prior_dir, _, _ = runs
  results = json.loads((prior_dir / 'eval' / 'results.json').read_text())
  metrics, info = results['metrics'], results['structure']
  rank = default.get_config('smoke').likelihood.rank
  assert info['images'] == 16
  for where in ('test_posterior_mean', 'prior'):
    spectrum = info[where]['singular_values']
    assert len(spectrum) == rank and spectrum == sorted(spectrum, reverse=True)
    assert 1.0 <= info[where]['participation_ratio'] <= rank
  assert 0.0 <= metrics['structure_span_share'] <= 1.0
  assert 0.0 <= metrics['structure_pca_span_share'] <= 1.0
  assert 0.0 <= metrics['structure_prior_centre_negative_share'] <= 1.0
  assert metrics['structure_participation_ratio'] == pytest.approx(
      info['test_posterior_mean']['participation_ratio'])
  assert 'structure_prior_span_share' not in metrics  # no residual for a prior draw
  markdown = (prior_dir / 'eval' / 'results.md').read_text()
  label = structure.REPORT_LABELS['participation_ratio']
  row = next(line for line in markdown.splitlines() if line.startswith(f'| {label} |'))
  test, prior = (float(v) for v in row.split('|')[2:4])
  assert test == pytest.approx(metrics['structure_participation_ratio'], rel=1e-3)
  assert prior == pytest.approx(metrics['structure_prior_participation_ratio'], rel=1e-3)
  span = structure.REPORT_LABELS['span_share']
  assert f'| {span} | ' in markdown and markdown.split(f'| {span} | ')[1].split('|')[1].strip() == '-'


@pytest.mark.slow
def test_structure_of_a_restored_run_equals_the_evaluation(runs):
  prior_dir, _, _ = runs
  results = json.loads((prior_dir / 'eval' / 'results.json').read_text())
  run = checkpoints.restore_run(str(prior_dir))
  settings = evaluate.EvalSettings(**TINY)
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    images = evaluate.input_pipeline.load_images(run.config.data, 'eval',
                                                  settings.structure_examples)
  metrics, info = evaluate.structure_of_run(run, images, settings, seed=settings.seed)
  assert info['images'] == settings.structure_examples
  structure_keys = [k for k in results['metrics'] if k.startswith('structure_')]
  assert sorted(metrics) == sorted(structure_keys)
  for k in structure_keys:
    assert metrics[k] == pytest.approx(results['metrics'][k], rel=1e-5, abs=1e-7), k


@pytest.mark.slow
def test_structure_of_run_refuses_a_likelihood_without_factor(runs):
  prior_dir, _, _ = runs
  run = checkpoints.restore_run(str(prior_dir))
  config = run.config.copy_and_resolve_references()
  config.likelihood = default.get_config('smoke').likelihood
  config.likelihood.name = 'diagonal_gaussian'
  with pytest.raises(ValueError, match='no low-rank covariance factor'):
    evaluate.structure_of_run(run._replace(config=config), np.zeros((2, 28, 28, 1), np.uint8))
