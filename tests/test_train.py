"""End to end: smoke configs train, log, draw, checkpoint and resume exactly."""

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import train_fixtures

from experiments.configs import beta_vae
from experiments.configs import default
from sosvae_jax import metric_writers
from sosvae_jax import train

REQUIRED = {'step', 'loss', 'elbo', 'kl', 'log_likelihood', 'entropy', 'steps_per_sec',
            'multiplier_kl', 'multiplier_entropy'}


def _mock_config(module=default, **overrides):
  config = module.get_config('smoke')
  config.data.source = 'tfds'
  config.data.name = 'fashion_mnist'
  for k, v in overrides.items():
    config[k] = v
  return config


def _run(config, workdir):
  with tfds.testing.mock_data(num_examples=64):
    return train.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_sos_vae_smoke_run_writes_everything(tmp_path):
  config = _mock_config()
  state = _run(config, tmp_path)
  assert int(state.step) == config.num_steps
  records = metric_writers.read_metrics(str(tmp_path), 'train')
  assert records and REQUIRED <= set(records[0])
  assert all(np.isfinite(r['loss']) for r in records)
  assert all(r['multiplier_kl'] >= 0 and r['multiplier_entropy'] >= 0 for r in records)
  evals = metric_writers.read_metrics(str(tmp_path), 'eval')
  assert [r['step'] for r in evals] == [3, 6]
  figures = sorted(os.listdir(tmp_path / 'figures'))
  assert 'samples_0000006.png' in figures and 'reconstructions_0000006.png' in figures
  assert os.listdir(tmp_path / 'tensorboard')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']


@pytest.mark.slow
def test_beta_vae_smoke_run_has_only_kl_multiplier(tmp_path):
  config = _mock_config(beta_vae)
  _run(config, tmp_path)
  record = metric_writers.read_metrics(str(tmp_path), 'train')[-1]
  assert 'multiplier_kl' in record and 'multiplier_entropy' not in record


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path):
  straight = _run(_mock_config(num_steps=8), tmp_path / 'a')
  _run(_mock_config(num_steps=4), tmp_path / 'b')
  resumed = _run(_mock_config(num_steps=8), tmp_path / 'b')
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps = [r['step'] for r in metric_writers.read_metrics(str(tmp_path / 'b'), 'train')]
  assert steps == [2, 4, 6, 8]  # the second launch continued from step 4
  # TensorBoard's HPARAMS tab, from the event files of the training alone:
  # one row per run (every launch writes the same one), its hparams
  # config.json (the first launch: b's says 4 steps), its metrics the latest
  # in-loop evaluation.
  for workdir, launches in (('a', 1), ('b', 2)):
    rows = train_fixtures.hparams_rows(str(tmp_path / workdir))
    assert list(rows) == ['.'] and not rows['.']['experiment']
    assert rows['.']['starts'] == [metric_writers.run_hparams(str(tmp_path / workdir))] * launches
    assert rows['.']['hparams']['num_steps'] == (8 if workdir == 'a' else 4)
    last = metric_writers.read_metrics(str(tmp_path / workdir), 'eval')[-1]
    assert last['step'] == 8
    for name in ('elbo', 'kl', 'multiplier_kl'):
      assert rows['.']['metrics'][f'eval/{name}'] == (8, pytest.approx(last[name], rel=1e-6))


@pytest.mark.slow
def test_pretraining_freezes_variance_heads_then_releases_them():
  _, state, step = train_fixtures.smoke_step(pretrain_steps=2)
  batch = train_fixtures.random_batch(0)
  head = lambda s: s.params['likelihood']['factor']['factor_head']['kernel']
  mean_head = lambda s: s.params['likelihood']['mean']['mean_head']['kernel']
  first = state
  for _ in range(2):
    state, metrics = step(state, batch)
    assert float(metrics['pretraining']) == 1.0
  np.testing.assert_array_equal(head(state), head(first))
  assert not np.array_equal(mean_head(state), mean_head(first))
  state, metrics = step(state, batch)
  assert float(metrics['pretraining']) == 0.0
  assert not np.array_equal(head(state), head(first))


@pytest.mark.slow
def test_step_updates_multipliers_by_reference_rule():
  """Inside the jitted step: lambda_kl' = max(0, lambda_kl + KL - xi_KL)."""
  config = default.get_config('smoke')
  config.constraints.kl.target = 0.0  # any KL > 0 violates it
  _, state, step = train_fixtures.smoke_step(config, multiplier_lr=1.0)
  new, metrics = step(state, train_fixtures.random_batch(1))
  assert float(new.multipliers['kl']) == pytest.approx(float(metrics['kl']), rel=1e-6)
  expected_h = max(0.0, float(metrics['entropy']) - config.constraints.entropy.target)
  assert float(new.multipliers['entropy']) == pytest.approx(expected_h, rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_variance_lr_scale_scales_only_variance_head_updates():
  batch = train_fixtures.random_batch(2)
  head = lambda s: np.asarray(s.params['likelihood']['factor']['factor_head']['kernel'])
  mean_head = lambda s: np.asarray(s.params['likelihood']['mean']['mean_head']['kernel'])
  moved = {}
  for scale in (1.0, 0.5, 0.0):
    _, state, step = train_fixtures.smoke_step(variance_lr_scale=scale)
    new, _ = step(state, batch)
    moved[scale] = (head(new) - head(state), mean_head(new) - mean_head(state))
  np.testing.assert_allclose(moved[0.5][0], 0.5 * moved[1.0][0], rtol=1e-5, atol=1e-12)
  assert not np.any(moved[0.0][0])
  for scale in (0.5, 0.0):
    np.testing.assert_array_equal(moved[scale][1], moved[1.0][1])


def test_metric_writer_drops_records_after_resume_point(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  for step in (2, 4, 6):
    writer.write(step, {'loss': float(step)})
  writer.write(6, {'elbo': float('nan')}, split='eval')
  writer.drop_after(4)
  records = metric_writers.read_metrics(str(tmp_path))
  assert [r['step'] for r in records] == [2, 4]
  writer.close()
