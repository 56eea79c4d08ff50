"""The decoder study (experiments/sweeps/decoders.py): its points, its report, its smoke run."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from experiments.configs import default
from sosvae_jax import sweep
from sosvae_jax.models import likelihoods

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY = str(ROOT / 'experiments' / 'sweeps' / 'decoders.py')


def _decoders():
  return sweep._sweep_module(STUDY)  # pylint: disable=protected-access


def _points(arg, tmp_path):
  base = default.get_config('smoke' if arg == 'smoke' else None)
  base.lock()
  points = sweep.make_points(base, sweep.load_sweep_file(STUDY + (f':{arg}' if arg else '')),
                             str(tmp_path))
  sweep.check_points(points)
  return points


def test_every_model_has_three_seeds_and_passes_the_checks(tmp_path):
  decoders = _decoders()
  points = _points(None, tmp_path)
  assert len(points) == 3 * len(decoders.MODELS) == 51
  assert {p.name for p in points} == {f'label={m.label}+seed={s}' for m in decoders.MODELS
                                      for s in (0, 1, 2)}
  # One trunk, one budget: only the likelihood and the objective differ.
  for field in ('model.channels', 'model.latent_dim', 'batch_size', 'num_steps',
                'optimizer.learning_rate', 'data.name'):
    assert len({json.dumps(sweep.point_values(p, [field])[field]) for p in points}) == 1, field
  assert sweep.swept_fields(points) == [sweep.LABEL, sweep.SEED_FIELD]


def test_each_point_is_its_models_own_config_on_the_shared_trunk(tmp_path):
  decoders = _decoders()
  by_label = {p.label: p.config for p in _points(None, tmp_path) if p.config.seed == 0}
  for model in decoders.MODELS:
    own, point = model.get_config(None), by_label[model.label]
    channels = own.data.image_shape[-1]
    expected = likelihoods.likelihood_section(own.likelihood.name, own.likelihood, channels)
    expected.update({k.partition('.')[2]: v for k, v in model.changes.items()
                     if k.startswith('likelihood.')})
    got = point.likelihood.to_dict()
    for field in decoders.SCHEDULE_FIELDS:  # rescaled below
      if field.startswith('likelihood.'):
        expected.pop(field.partition('.')[2], None)
        got.pop(field.partition('.')[2], None)
    assert got == expected, model.label
    for field in ('pretrain_steps', 'likelihood.switch_step',
                  'likelihood.variance_minimiser_switch_step'):
      value = decoders._get(own, field)  # pylint: disable=protected-access
      if value is not None:
        fraction = decoders._get(point, field) / point.num_steps  # pylint: disable=protected-access
        assert fraction == pytest.approx(value / own.num_steps, abs=1e-3), (model.label, field)
  # Each paper's objective.
  assert by_label['categorical'].constraints.kl.enabled is False
  assert by_label['categorical'].kl_weight == 1.0
  assert by_label['dorta_structured'].constraints.kl.enabled is True
  assert by_label['dorta_structured'].constraints.entropy.enabled is False
  assert by_label['sos_vae'].constraints.entropy.enabled is True
  assert by_label['sos_no_entropy'].constraints.entropy.enabled is False
  assert by_label['sos_shared_head'].likelihood.factor_trunk is None
  # The beta-VAE's SSE + beta KL as the decoder with sigma = sqrt(beta / 2).
  beta_vae = by_label['beta_vae']
  assert 2 * beta_vae.likelihood.sigma ** 2 == pytest.approx(decoders.BEST_BETA)
  assert beta_vae.kl_weight == 1.0


def test_first_seed_points_are_the_full_studys(tmp_path):
  full = {p.name: p.overrides for p in _points(None, tmp_path)}
  for p in _points('first_seed', tmp_path):
    assert full[p.name] == p.overrides


def _table(means):
  """A summary table with one finished seed per (label, column) given."""
  decoders = _decoders()
  table = {}
  for (label, column), value in means.items():
    row = table.setdefault(label, {c: (math.nan, math.nan, 0) for c in decoders.COLUMNS})
    row[column] = (value, math.nan, 1)
  return table


def test_claims_verdicts_follow_the_numbers():
  decoders = _decoders()
  good = {('dorta_structured', 'iwae'): 900.0, ('diagonal_gaussian', 'iwae'): 800.0}
  verdicts = {c: v for c, _, v in decoders.claims(_table(good))}
  dorta = next(c for c in verdicts if 'structured precision has a higher' in c)
  assert verdicts[dorta] == 'holds'
  bad = {('dorta_structured', 'iwae'): 700.0, ('diagonal_gaussian', 'iwae'): 800.0}
  assert {c: v for c, _, v in decoders.claims(_table(bad))}[dorta] == 'does not hold here'
  # Missing numbers never pass for a verdict.
  assert all(v.startswith('not testable') for _, _, v in decoders.claims({}))


def _tables(text):
  return [line for line in text.splitlines() if line.startswith('| ')]


@pytest.mark.slow
def test_smoke_study_runs_every_likelihood_with_both_samplers(tmp_path):
  decoders = _decoders()
  root = tmp_path / 'study'
  cmd = [sys.executable, '-m', 'experiments.sweep',
         '--config=experiments/configs/default.py:smoke', f'--sweep={STUDY}:smoke',
         f'--workdir={root}', '--evaluate', '--samplers=prior,gmm',
         f'--config.evaluation.classifier_cache_dir={tmp_path / "classifiers"}']
  # Seventeen models are seventeen sets of programs to compile: XLA's lowest
  # optimisation level halves that, and this run checks the plumbing, not
  # the numbers (those tests keep the default level).
  flags = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': flags})
  assert proc.returncode == 0, proc.stderr[-3000:]
  manifest = json.loads((root / sweep.MANIFEST).read_text())
  assert {r['label'] for r in manifest['rows']} == set(decoders.LABELS)
  assert all(r['status'] == sweep.FINISHED for r in manifest['rows'])
  for row in manifest['rows']:
    for sampler in ('prior', 'gmm'):
      results = json.loads((root / row['name'] / 'eval' / f'results_{sampler}.json').read_text())
      assert results['sampler'] == sampler and results['num_params'] > 0
      assert math.isfinite(results['metrics']['fid_classifier_samples'])
  text = (root / sweep.TABLE_MD).read_text()
  report = text[text.index('## Which decoder?'):]
  rows = _tables(report)
  # Two tables with a row per model, then one row per claim, all measured.
  assert len(rows) == 2 * (len(decoders.MODELS) + 1) + len(decoders.claims({})) + 1
  assert not any('not testable' in r for r in rows)
  assert (root / decoders.FIGURE_PNG).is_file()
