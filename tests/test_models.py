"""Heads, their initialisation, the VAE wiring and the pretraining mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import beta_vae
from experiments.configs import default
from sosvae_jax import likelihoods
from sosvae_jax import train
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.models import build_model


def _init(config):
  model = build_model(config)
  x = jnp.full((2,) + tuple(config.data.image_shape), 0.3)
  params = model.init({'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)}, x)['params']
  return model, params, x


def test_sos_vae_outputs_lowrank_with_fixed_diagonal():
  config = default.get_config('smoke')
  model, params, x = _init(config)
  out = model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(2)})
  dist = out.observation
  assert isinstance(dist, LowRankMultivariateNormal)
  assert dist.cov_factor.shape == (2, 784, config.likelihood.rank)
  np.testing.assert_allclose(dist.cov_diag, 1e-5)
  # Paper init: mean bias 0.5 and near-zero head weights -> mean ~ 0.5, P ~ 0.
  np.testing.assert_allclose(dist.mean(), 0.5, atol=1e-3)
  assert float(jnp.abs(dist.cov_factor).max()) < 1e-3
  assert out.z.shape == out.posterior_mean.shape == (2, config.model.latent_dim)
  kernel = params['likelihood']['factor']['factor_head']['kernel']
  assert float(jnp.std(kernel)) == pytest.approx(1e-5, rel=0.2)


def test_beta_vae_outputs_diagonal_gaussian_on_same_trunk():
  sos_model, sos_params, _ = _init(default.get_config('smoke'))
  beta_model, beta_params, x = _init(beta_vae.get_config('smoke'))
  assert jax.tree.structure(sos_params['trunk']) == jax.tree.structure(beta_params['trunk'])
  dist = beta_model.apply({'params': beta_params}, x, rngs={'sample': jax.random.PRNGKey(2)}).observation
  assert dist.event_shape == (784,)
  np.testing.assert_allclose(dist.variance(), 0.05, rtol=1e-3)  # init_variance


def test_learned_diagonal_option():
  config = default.get_config('smoke')
  config.likelihood.fixed_diag = None
  model, params, x = _init(config)
  assert 'diag' in params['likelihood']
  dist = model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(2)}).observation
  assert float(dist.cov_diag.min()) >= 1e-5


def test_variance_head_mask_selects_only_variance_heads():
  config = default.get_config('smoke')
  config.likelihood.fixed_diag = None
  _, params, _ = _init(config)
  mask = train.variance_head_mask(params)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert all(m == (('factor_head' in k) or ('diag_head' in k)) for k, m in flat.items())
  assert any(flat.values()) and not all(flat.values())


def test_unknown_likelihood_lists_choices():
  config = default.get_config('smoke')
  config.likelihood.name = 'lowrank'
  with pytest.raises(ValueError, match="'lowrank'.*diagonal_gaussian.*lowrank_gaussian"):
    build_model(config)
