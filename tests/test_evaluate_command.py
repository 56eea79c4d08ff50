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
from sosvae_jax import lagrangian
from sosvae_jax import train
from sosvae_jax.evaluation import classifier
from sosvae_jax.evaluation import evaluate
from sosvae_jax.evaluation import report
from sosvae_jax.models import build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 48
# A tiny evaluation; both runs share one cached classifier.
TINY = dict(num_samples=24, iwae_k=4, iwae_chunk=4, batch_size=16, mi_examples=20,
            mi_samples=2, gmm_examples=40, coherence_examples=24)
CLI_FLAGS = ['--num_samples=24', '--iwae_k=4', '--iwae_chunk=4', '--eval_batch_size=16',
             '--mi_examples=20', '--classifier_steps=5']


def _untrained_run(workdir, config):
  """config.json and a step-0 checkpoint of a freshly initialised model.

  Evaluation only needs a restorable run; training it first would triple this
  file's run time on CPU and test nothing more here (test_main trains).
  """
  model = build_model(config)
  tx = train.make_optimizer(config)
  constraints = lagrangian.constraints_from_config(config.constraints)
  mtx = lagrangian.multiplier_optimizer(lagrangian.multiplier_learning_rates(
      config.constraints, config.multiplier_learning_rate))
  state = train.create_train_state(config, model, tx, mtx, constraints)
  os.makedirs(workdir)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  manager = train.checkpoint_manager(str(workdir), config)
  assert train.save_checkpoint(manager, state, 0)
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A run evaluated with the prior and a copy evaluated with the GMM sampler."""
  root = tmp_path_factory.mktemp('eval')
  prior_dir, gmm_dir, cache = root / 'sos_prior', root / 'sos_gmm', root / 'classifiers'
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  _untrained_run(prior_dir, config)
  shutil.copytree(prior_dir, gmm_dir)
  settings = dict(classifier_cache_dir=str(cache),
                  classifier=classifier.ClassifierSettings(num_steps=5), **TINY)
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    evaluate.evaluate_and_write(str(prior_dir), **settings)
    gmm_results = evaluate.evaluate_and_write(str(gmm_dir), sampler='gmm',
                                              gmm_components=3, **settings)
  return prior_dir, gmm_dir, gmm_results


def test_cli_flags_reach_the_evaluation(runs, tmp_path):
  """--mode=evaluate builds its settings from every flag; bad ones exit 2 with one line.

  (The evaluation itself is the fixture's; a second full run in a subprocess
  would double this file's time.)
  """
  prior_dir, _, _ = runs
  cmd = [sys.executable, '-m', 'experiments.main', '--mode=evaluate',
         f'--workdir={prior_dir}', *CLI_FLAGS, '--num_samples=1',
         f'--inception_weights={tmp_path / "missing.npz"}']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'num_samples=1' in result.stderr and 'missing.npz' in result.stderr
  assert 'pt_inception-2015-12-05' in result.stderr and 'Traceback' not in result.stderr


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


def test_report_combines_runs(runs, tmp_path):
  prior_dir, gmm_dir, _ = runs
  paths = report.write_report([str(prior_dir), str(gmm_dir)], str(tmp_path / 'report'))
  markdown = pathlib.Path(paths['markdown']).read_text()
  rows = [line for line in markdown.splitlines() if line.startswith('| sos_')]
  assert [r.split('|')[1].strip() for r in rows] == ['sos_prior', 'sos_gmm']
  assert 'classifier FID means' in markdown and 'classifier FID samples' in markdown
  assert 'DIFFERENT feature classifiers' not in markdown
  image = np.asarray(Image.open(paths['png']))
  panel = np.asarray(Image.open(prior_dir / 'eval' / 'samples.png'))
  # Two panels side by side: the first has row labels, the second does not.
  assert image.shape[0] == panel.shape[0] + report.TITLE_HEIGHT
  assert image.shape[1] > panel.shape[1]


def test_bits_per_dim_known_answers():
  num_dims = 784
  assert evaluate.bits_per_dim(-3 * num_dims * math.log(2), num_dims, True) == pytest.approx(3)
  assert evaluate.bits_per_dim(-3 * num_dims * math.log(2), num_dims, False) == pytest.approx(11)


def test_bad_requests_are_explained(runs, tmp_path):
  prior_dir, _, _ = runs
  with pytest.raises(ValueError, match=r"inception_weights='/no/such.npz'.*pt_inception"):
    evaluate.evaluate_run(str(prior_dir), inception_weights='/no/such.npz')
  with pytest.raises(ValueError, match='num_samples=1'):
    evaluate.evaluate_run(str(prior_dir), num_samples=1)
  with pytest.raises(FileNotFoundError, match='--mode=evaluate'):
    report.write_report([str(prior_dir), str(tmp_path)], str(tmp_path / 'r'))
