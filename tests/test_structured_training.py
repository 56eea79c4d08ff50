"""Dorta's structured Gaussian in training: heads, penalties, configs, a run."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds

from experiments.configs.table1 import celeba64_beta_vae
from experiments.configs.table1 import celeba64_sos_vae
from experiments.configs.table1 import celeba64_structured
from experiments.configs.table1 import fmnist_beta_vae
from experiments.configs.table1 import fmnist_sos_vae
from experiments.configs.table1 import fmnist_structured
from sosvae_jax import config_checks
from sosvae_jax import input_pipeline
from sosvae_jax.models import likelihoods
from sosvae_jax import train
from sosvae_jax.distributions import structured_ycbcr
from sosvae_jax.models import build_model
from sosvae_jax.models import structured_heads
import train_fixtures

_FMNIST = (fmnist_beta_vae, fmnist_structured, fmnist_sos_vae)
_CELEBA = (celeba64_beta_vae, celeba64_structured, celeba64_sos_vae)
_YCC = np.array([[0.299, 0.587, 0.114],
                 [-0.299 / 1.772, -0.587 / 1.772, 0.5],
                 [0.5, -0.587 / 1.402, -0.114 / 1.402]])  # BT.601 full range


def _structured_config(**likelihood) -> ml_collections.ConfigDict:
  config = fmnist_structured.get_config('smoke')
  config.likelihood.update(likelihood)
  return config


def _colour_config(**likelihood) -> ml_collections.ConfigDict:
  config = _structured_config(chroma_factor=2, **likelihood)
  config.data.image_shape = (8, 8, 3)
  config.model.channels = (8,)
  return config


def _dense_lower(log_diag, off_diag, k, d):
  """Dense L of one [H, W] image from the documented layout, float64."""
  h, w = log_diag.shape
  r, centre = k // 2, k * k // 2
  lower = np.diag(np.exp(log_diag).ravel())
  for i in range(h):
    for j in range(w):
      for t in range(centre + 1, k * k):
        qi, qj = i + d * (t // k - r), j + d * (t % k - r)
        if 0 <= qi < h and 0 <= qj < w:
          lower[qi * w + qj, i * w + j] = off_diag[i, j, t - centre - 1]
  return lower


# ---------------------------------------------------------------- registry ---


def test_registry_entry_and_heads():
  entry = likelihoods.LIKELIHOODS['structured_gaussian']
  assert not entry.discrete and not entry.low_rank and entry.checks
  cfg = ml_collections.ConfigDict({'name': 'structured_gaussian'})
  assert isinstance(entry.build(cfg, 1),
                    structured_heads.StructuredGaussianLikelihood)
  assert isinstance(entry.build(cfg, 3),
                    structured_heads.StructuredYCbCrLikelihood)


# ---------------------------------------------------------------- penalties ---


def test_gamma_log_density_matches_scipy():
  with jax.enable_x64(True):
    value = np.logspace(-8, 8, 33)
    for a, b in ((0.5, 1e-3), (1.0, 1.0), (50.0, 20.0)):
      got = structured_heads.gamma_log_density(jnp.asarray(value), a, b)
      np.testing.assert_allclose(
          got, scipy.stats.gamma(a, scale=1.0 / b).logpdf(value), rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize('k,d,a,b', [(3, 1, 2.0, 0.5), (5, 2, 0.5, 1e-2)])
def test_gamma_prior_penalty_matches_scipy(k, d, a, b):
  """The sown term is -weight * batch mean of sum_p log Gamma(Lambda_pp)."""
  weight, h, w = 0.3, 6, 6
  head = structured_heads.StructuredGaussianLikelihood(
      kernel_size=k, dilation=d, gamma_prior_weight=weight, gamma_concentration=a,
      gamma_rate=b, head_init_stddev=0.5)
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.normal(size=(3, h, w, 4)), jnp.float32)
  x = jnp.asarray(rng.uniform(size=(3, h, w, 1)), jnp.float32)
  variables = jax.jit(head.init)(jax.random.PRNGKey(0), feats, x)
  dist, sown = jax.jit(lambda v, f, x: head.apply(
      v, f, x, train=True, step=jnp.int32(0), mutable=['penalties']))(
          variables, feats, x)
  got = float(sown['penalties']['gamma_prior'][0])
  log_diag = np.asarray(dist.log_diag, np.float64)
  off_diag = np.asarray(dist.off_diag, np.float64)
  ref = []
  for i in range(3):
    lower = _dense_lower(log_diag[i], off_diag[i], k, d)
    lam = np.diag(lower @ lower.T)
    ref.append(scipy.stats.gamma(a, scale=1.0 / b).logpdf(lam).sum())
  np.testing.assert_allclose(got, -weight * np.mean(ref), rtol=1e-5)
  # Outside training nothing is sown.
  _, sown = head.apply(variables, feats, x, mutable=['penalties'])
  assert not sown.get('penalties')


# ------------------------------------------------------------------ colour ---


def _dense_rgb_log_prob(dist, rgb):
  """log N over the flat RGB image from a dense float64 YCbCr covariance."""
  h, w, _ = dist.event_shape
  f = dist.factor
  tau = dist._detail_scale  # pylint: disable=protected-access
  s = h * w
  out = []
  for i in range(dist.batch_shape[0]):
    luma = dist.luma
    lower = _dense_lower(np.asarray(luma.log_diag[i], np.float64),
                         np.asarray(luma.off_diag[i], np.float64),
                         luma.kernel_size, luma.dilation)
    cov = np.zeros((3 * s, 3 * s))
    mean = np.zeros(3 * s)
    cov[0::3, 0::3] = np.linalg.inv(lower @ lower.T)
    mean[0::3] = np.asarray(luma.loc[i], np.float64).ravel()
    c_loc = np.asarray(dist.chroma_loc[i], np.float64)
    c_var = np.exp(2 * np.asarray(dist.chroma_log_scale[i], np.float64))
    for p in range(s):
      bp = (p // w // f, p % w // f)
      for c in (1, 2):
        mean[3 * p + c] = c_loc[bp + (c - 1,)]
      for q in range(s):
        if bp == (q // w // f, q % w // f):
          for c in (1, 2):
            cov[3 * p + c, 3 * q + c] = (c_var[bp + (c - 1,)]
                                         + tau ** 2 * ((p == q) - 1 / f ** 2))
    a_inv = np.linalg.inv(np.kron(np.eye(s), _YCC))
    rgb_mean = a_inv @ (mean - np.tile([0.0, 0.5, 0.5], s))
    out.append(scipy.stats.multivariate_normal(
        rgb_mean, a_inv @ cov @ a_inv.T).logpdf(
            np.asarray(rgb[i], np.float64).ravel()))
  return np.array(out)


@pytest.mark.slow
def test_colour_head_through_the_loss_and_a_dense_rgb_reference():
  """The registry's C = 3 head inside train.loss_fn (finite loss, gradient
  and penalties) and its distribution against a dense float64 RGB Gaussian,
  Jacobian of the colour change included."""
  config = _colour_config(head_init_stddev=0.05, chroma_detail_scale=0.05,
                          gamma_prior_weight=1e-3)
  model = build_model(config)
  batch = train_fixtures.random_batch(1, 2, (8, 8, 3))
  images = input_pipeline.preprocess(batch)
  variables = jax.jit(model.init)({'params': jax.random.PRNGKey(0),
                                   'sample': jax.random.PRNGKey(1)}, images)
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  rng = jax.random.PRNGKey(2)

  @jax.jit
  def run(params, batch):
    (loss, (metrics, _)), grads = jax.value_and_grad(
        train.loss_fn, has_aux=True)(
            params, {}, model_state, batch, rng, jnp.int32(0), model=model,
            constraints={})
    dist = model.apply({'params': params, **model_state},
                       input_pipeline.preprocess(batch),
                       rngs={'sample': rng}).observation
    return loss, metrics, grads, dist

  loss, metrics, grads, dist = run(variables['params'], batch)
  assert np.isfinite(float(loss)) and bool(train.all_finite(grads))
  assert float(metrics['penalty_variance_minimiser']) > 0
  assert np.isfinite(float(metrics['penalty_gamma_prior']))
  assert isinstance(dist, structured_ycbcr.StructuredYCbCrNormal)
  assert dist.event_shape == (8, 8, 3) and dist.factor == 2
  got = np.asarray(dist.log_prob(images))
  np.testing.assert_allclose(got, _dense_rgb_log_prob(dist, images), rtol=2e-5)
  np.testing.assert_allclose(np.mean(got), metrics['log_likelihood'],
                             rtol=1e-5)
  assert dist.mean().shape == (2, 8, 8, 3)
  assert dist.sample(seed=jax.random.PRNGKey(3)).shape == (2, 8, 8, 3)


# --------------------------------------------------------------- two phases ---


@pytest.mark.slow
def test_two_phases_basis_dilation_and_gamma_prior_in_training():
  """Mean first, then covariance: config.pretrain_steps freezes the heads
  its registry entry names (precision_diag_head, precision_offdiag_head with
  its basis); every step stays finite with the Gamma prior on."""
  config = _structured_config(num_basis=2, dilation=2, kernel_size=5,
                              gamma_prior_weight=1e-3)
  _, state, step = train_fixtures.smoke_step(config, pretrain_steps=2)
  stats = state.model_state['likelihood_stats']['likelihood']
  assert int(stats['switch_step']) == 3  # the loop may lower it on a plateau
  head = lambda s: s.params['likelihood']['precision']
  mean = lambda s: s.params['likelihood']['mean']
  trees_equal = lambda a, b: all(jax.tree.leaves(jax.tree.map(
      lambda u, v: bool(jnp.all(u == v)), a, b)))
  start = state
  for t in range(3):
    state, metrics = step(state, train_fixtures.random_batch(t))
    assert np.isfinite(float(metrics['loss']))
    assert np.isfinite(float(metrics['penalty_gamma_prior']))
    assert float(metrics['pretraining']) == (1.0 if t < 2 else 0.0)
    if t == 1:
      assert trees_equal(head(start), head(state))
      assert not trees_equal(mean(start), mean(state))
  for name in ('precision_diag_head', 'precision_offdiag_head'):
    assert not trees_equal(head(start)[name], head(state)[name])
  assert head(state)['precision_offdiag_head']['basis'].shape == (2, 12)


# ----------------------------------------------------------------- configs ---


@pytest.mark.parametrize('module', _FMNIST)
def test_fmnist_trio_configs_pass_the_checker(module):
  for arg in (None, 'smoke'):
    config = module.get_config(arg)
    config_checks.check_config(config, num_devices=1)
  build_model(config)


def test_celeba_trio_configs_pass_the_checker():
  with tfds.testing.mock_data(num_examples=2):
    for module in _CELEBA:
      for arg in (None, 'smoke'):
        config = module.get_config(arg)
        assert tuple(config.data.image_shape) == (64, 64, 1)
        assert config.model.latent_dim == (128 if arg is None else 4)
        config_checks.check_config(config, num_devices=1)
    source = input_pipeline.get_source(config.data, 'train')
    assert source[0].shape == (64, 64, 1)  # centre crop, grey, resize
  full = {m.__name__.rsplit('.', 1)[-1]: m.get_config() for m in _CELEBA}
  assert all(c.constraints.kl.target == 45.0 for c in full.values())
  assert full['celeba64_sos_vae'].likelihood.rank == 25
  assert full['celeba64_sos_vae'].constraints.entropy.target == -17630.0
  steps_per_epoch = 162770 // 64
  assert (full['celeba64_structured'].likelihood.variance_minimiser_switch_step
          == 10 * steps_per_epoch)


def test_config_problems_are_reported():
  config = _colour_config(kernel_size=4, dilation=0, num_basis=-1,
                          variance_minimiser_end=-1.0)
  config.likelihood.chroma_factor = 3
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_config(config, num_devices=1)
  msg = str(e.value)
  for field in ('likelihood.kernel_size=4', 'likelihood.dilation=0',
                'likelihood.num_basis=-1', 'likelihood.chroma_factor=3',
                'likelihood.variance_minimiser_end=-1.0'):
    assert f'config.{field}' in msg, msg
  config = _structured_config(kernel_size=5, dilation=14)
  assert any('beyond the 28x28 image' in p for p in
             likelihoods.LIKELIHOODS['structured_gaussian'].problems(config))


# --------------------------------------------------------------- end to end ---


@pytest.mark.slow
def test_fmnist_structured_smoke_trains(tmp_path):
  """The config end to end; alpha = 5e3 before variance_minimiser_switch_step
  (3 in the smoke config), then 10: the logged penalty is alpha * S * mse."""
  config = fmnist_structured.get_config('smoke')
  config.num_steps = 5
  config.log_every_steps = 1
  config.eval_every_steps = 5
  config.checkpoint_every_steps = 5
  config.eval_examples = 8
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  trained = {r['step']: r for r in rows if r.get('split') == 'train'}
  assert sorted(trained) == [1, 2, 3, 4, 5]
  for logged_step, r in trained.items():
    assert np.isfinite(r['loss'])
    alpha = 5e3 if logged_step - 1 < 3 else 10.0  # row n is step n - 1's
    np.testing.assert_allclose(r['penalty_variance_minimiser'],
                               alpha * 784 * r['mse'], rtol=1e-4)
  assert any(r.get('split') == 'eval' and np.isfinite(r['elbo']) for r in rows)
  assert os.path.exists(tmp_path / 'figures' / 'samples_0000005.png')
