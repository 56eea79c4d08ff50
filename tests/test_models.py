"""Heads, their initialisation, the VAE wiring, the registry and the pretraining mask."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import beta_vae
from experiments.configs import default
from experiments.configs import sos_basis
from experiments.configs import sos_shared_head
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.models import build_model
from sosvae_jax.models import get_likelihood
from sosvae_jax.models import LIKELIHOODS
from sosvae_jax.models import register_likelihood
from sosvae_jax import train_state
from sosvae_jax.models import variance_parameter_mask
import train_fixtures


def _init(config):
  model = build_model(config)
  x = jnp.full((2,) + tuple(config.data.image_shape), 0.3)
  # Compiled once: op by op, flax's init compiles every layer's pieces apart.
  params = train_state.call_init(
      model.init, {'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)}, x)['params']
  return model, params, x


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_variance_mask_selects_only_variance_heads():
  config = default.get_config('smoke')
  config.likelihood.fixed_diag = None
  _, params, _ = _init(config)
  mask = variance_parameter_mask(params, 'lowrank_gaussian')
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert all(m == any(h in k for h in ('factor_head', 'factor_decoder', 'diag_head'))
             for k, m in flat.items())
  assert any(flat.values()) and not all(flat.values())


def _factor_decoder_config(**likelihood):
  config = default.get_config('smoke')
  config.likelihood.factor_trunk = (8, 16)
  config.likelihood.update(likelihood)
  return config


def _paths(tree) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_without_factor_trunk_the_parameter_tree_is_unchanged():
  config = sos_shared_head.get_config('smoke')
  assert LIKELIHOODS['lowrank_gaussian'].fields(config.likelihood, 1)['factor_trunk'] is None
  _, params, _ = _init(config)
  assert set(params) == {'encoder', 'trunk', 'likelihood'}
  assert _paths(params['likelihood']) == {
      f"['{head}']['{conv}']['{leaf}']" for head, conv in
      (('mean', 'mean_head'), ('factor', 'factor_head')) for leaf in ('kernel', 'bias')}


def test_factor_trunk_builds_its_own_decoder_of_variance_parameters():
  config = _factor_decoder_config()
  model, params, x = _init(config)
  decoder = params['likelihood']['factor_decoder']
  # Same layers as the mean's trunk, with the factor trunk's channels.
  assert set(decoder) == set(params['trunk'])
  assert decoder['upconv1']['kernel'].shape[-1] == 8
  out = model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(2)})
  assert out.observation.cov_factor.shape == (2, 784, config.likelihood.rank)
  mask = variance_parameter_mask(params, 'lowrank_gaussian')
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert all(m == (('factor_decoder' in k) or ('factor_head' in k)) for k, m in flat.items())
  assert all(m for k, m in flat.items() if 'factor_decoder' in k)


def _basis_config(**likelihood):
  config = sos_basis.get_config('smoke')
  config.likelihood.update(likelihood)
  return config


@pytest.mark.slow
@pytest.mark.parametrize('make_config', [_factor_decoder_config, _basis_config],
                         ids=['conv_decoder', 'basis'])
def test_factor_decoder_sends_no_gradient_from_p_into_encoder_or_mean_trunk(make_config):
  # Larger head weights so that every gradient that may flow is far from 0.
  config = make_config(head_init_stddev=0.1)
  model, params, x = _init(config)

  def factor_energy(p):
    out = model.apply({'params': p}, x, rngs={'sample': jax.random.PRNGKey(2)})
    return jnp.sum(jnp.square(out.observation.cov_factor))

  grads = jax.grad(factor_energy)(params)
  assert all(float(jnp.abs(g).max()) == 0.0
             for g in jax.tree.leaves((grads['encoder'], grads['trunk'])))
  assert all(float(jnp.abs(g).max()) > 0.0
             for g in jax.tree.leaves(grads['likelihood']['factor_decoder']))


@pytest.mark.slow
def test_factor_trunk_smoke_train_step_updates_the_factor_decoder():
  config, state, step = train_fixtures.smoke_step(_factor_decoder_config())
  after, metrics = step(state, train_fixtures.random_batch(0))
  assert np.isfinite(float(metrics['loss']))
  before, now = (jax.tree.leaves(s.params['likelihood']['factor_decoder'])
                 for s in (state, after))
  assert all(not np.array_equal(a, b) for a, b in zip(before, now))


def test_factor_trunk_that_overshoots_the_image_is_rejected():
  config = _factor_decoder_config()
  entry = LIKELIHOODS['lowrank_gaussian']
  assert entry.problems(config) == []
  config.likelihood.factor_trunk = (8, 16, 32)  # 28 is not divisible by 8
  assert any('factor_trunk' in p and '2**3' in p for p in entry.problems(config))
  config.likelihood.factor_trunk = (8, 0)
  assert any('positive ints' in p for p in entry.problems(config))


def test_factor_basis_is_a_learned_basis_times_coefficients_of_z():
  config = sos_basis.get_config('smoke')
  rank, basis = config.likelihood.rank, config.likelihood.factor_basis
  model, params, x = _init(config)
  decoder = params['likelihood']['factor_decoder']
  assert 'factor' not in params['likelihood']  # no conv read-out
  assert decoder['basis'].shape == (784, basis)
  # P = U A(z) against a float64 numpy forward pass of the same parameters.
  out = model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(2)})
  p64 = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(decoder)
         for k in [jax.tree_util.keystr(k)]}
  z = np.asarray(out.z, np.float64)
  hidden = z @ p64["['hidden']['kernel']"] + p64["['hidden']['bias']"]
  hidden = np.asarray(jax.nn.gelu(jnp.asarray(hidden)), np.float64)
  coefficients = (hidden @ p64["['coefficients']['kernel']"]
                  + p64["['coefficients']['bias']"]).reshape(len(z), basis, rank)
  expected = np.einsum('sk,bkr->bsr', p64["['basis']"], coefficients)
  np.testing.assert_allclose(out.observation.cov_factor, expected, rtol=1e-4,
                             atol=1e-6 * np.abs(expected).max())
  # Starts near zero as the conv heads do; every leaf is a variance parameter.
  assert float(jnp.abs(out.observation.cov_factor).max()) < 1e-3
  mask = variance_parameter_mask(params, 'lowrank_gaussian')
  assert all(jax.tree.leaves(mask['likelihood']['factor_decoder']))


@pytest.mark.slow
def test_factor_basis_smoke_train_step_updates_the_basis():
  config, state, step = train_fixtures.smoke_step(sos_basis.get_config('smoke'))
  after, metrics = step(state, train_fixtures.random_batch(0))
  assert np.isfinite(float(metrics['loss']))
  before, now = (s.params['likelihood']['factor_decoder'] for s in (state, after))
  assert not np.array_equal(before['basis'], now['basis'])


@pytest.mark.parametrize('change, words', [
    (dict(factor_trunk=(8, 16)), 'not both'),
    (dict(factor_basis=2), 'rank <= K'),
    (dict(factor_basis=785), '<= S = 784'),
    (dict(factor_basis=0), 'rank <= K'),
])
def test_bad_factor_basis_is_named(change, words):
  config = sos_basis.get_config('smoke')
  entry = LIKELIHOODS['lowrank_gaussian']
  assert entry.problems(config) == []
  config.likelihood.update(change)
  problems = entry.problems(config)
  assert len(problems) == 1 and 'factor_basis' in problems[0] and words in problems[0]


@pytest.mark.slow
def test_diagonal_mean_gradient_trains_the_mean_as_the_diagonal_normal():
  """Through the whole VAE: the mean trunk's and encoder's gradients of
  log p(x|z) are those of log N(x; mu, D); the factor decoder's are those
  of the full likelihood; the value is the same."""
  config = _factor_decoder_config(head_init_stddev=0.1)
  model, params, x = _init(config)
  x = x + 0.05 * jax.random.normal(jax.random.PRNGKey(3), x.shape)
  rngs = {'sample': jax.random.PRNGKey(2)}

  def log_prob(p, mean_gradient, kind='lowrank'):
    out = model.apply({'params': p}, x, rngs=rngs)
    dist = out.observation
    target = x.reshape(x.shape[0], -1)
    if kind == 'diagonal':
      return jnp.sum(-0.5 * jnp.square(target - dist.loc) / dist.cov_diag)
    dist = LowRankMultivariateNormal(dist.loc, dist.cov_factor, dist.cov_diag,
                                     mean_gradient=mean_gradient)
    return jnp.sum(dist.log_prob(target))

  value_full, full = jax.value_and_grad(log_prob)(params, 'full')
  value_diag, diag = jax.value_and_grad(log_prob)(params, 'diagonal')
  reference = jax.grad(log_prob)(params, 'full', 'diagonal')
  assert value_diag == value_full
  for part in ('encoder', 'trunk'):
    for got, want, exact in zip(*(jax.tree.leaves(g[part]) for g in (diag, reference, full))):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * float(jnp.abs(want).max()))
      assert not np.allclose(got, exact, rtol=1e-2)
  for got, want in zip(*(jax.tree.leaves(g['likelihood']['factor_decoder']) for g in (diag, full))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))


def test_mean_gradient_reaches_the_distribution_and_a_bad_one_is_named():
  # The default trains its mean by the diagonal term; the paper's shared
  # head keeps the exact gradient.
  assert sos_shared_head.get_config('smoke').likelihood.mean_gradient == 'full'
  config = _factor_decoder_config()
  assert config.likelihood.mean_gradient == 'diagonal'
  model, params, x = _init(config)
  out = model.apply({'params': params}, x, rngs={'sample': jax.random.PRNGKey(2)})
  assert out.observation.mean_gradient == 'diagonal'
  config.likelihood.mean_gradient = 'diag'
  problems = LIKELIHOODS['lowrank_gaussian'].problems(config)
  assert any(p.startswith("config.likelihood.mean_gradient='diag':") and 'full' in p
             and 'diagonal' in p for p in problems), problems


def test_unknown_likelihood_lists_choices():
  config = default.get_config('smoke')
  config.likelihood.name = 'lowrank'
  with pytest.raises(ValueError, match="'lowrank'.*diagonal_gaussian.*lowrank_gaussian"):
    build_model(config)


def test_unknown_likelihood_field_names_field_likelihood_and_valid_fields():
  config = default.get_config('smoke')
  config.likelihood.rnak = 3
  with pytest.raises(ValueError, match=r"\['rnak'\].*'lowrank_gaussian'.*'fixed_diag'.*'rank'"):
    build_model(config)


def test_rank_is_rejected_by_the_diagonal_gaussian():
  config = beta_vae.get_config('smoke')
  config.likelihood.rank = 3
  with pytest.raises(ValueError, match=r"\['rank'\].*'diagonal_gaussian'"):
    build_model(config)


@pytest.mark.parametrize('name', sorted(LIKELIHOODS))
@pytest.mark.parametrize('channels', [1, 3])
def test_every_entry_builds_from_its_section_with_dataclass_defaults(name, channels):
  entry = LIKELIHOODS[name]
  required = {'rank': 2} if entry.low_rank else {}
  head = get_likelihood(ml_collections.ConfigDict(dict(name=name, **required)), channels)
  assert type(head) is entry.head_class(channels) and head.channels == channels
  for field in dataclasses.fields(type(head)):
    if field.name in entry.field_names(channels) and field.name not in required:
      assert getattr(head, field.name) == field.default, field.name
  # The variance heads it names are submodules of its parameters.
  features = jnp.zeros((1, 4, 4, 3))
  params = jax.eval_shape(head.init, jax.random.PRNGKey(0), features,
                          jnp.zeros((1, 4, 4, channels)))['params']
  flags = jax.tree.leaves(variance_parameter_mask(params, name))
  assert any(flags) == bool(entry.variance_heads)


def test_a_name_is_registered_once():
  with pytest.raises(ValueError, match="'lowrank_gaussian' is registered already"):
    register_likelihood('lowrank_gaussian', LIKELIHOODS['lowrank_gaussian'])


def test_a_config_read_back_from_json_builds_the_same_hashable_model():
  # config.json stores tuples as lists; jit caches key on the (hashable) module.
  config = _factor_decoder_config()
  back = ml_collections.ConfigDict(json.loads(config.to_json()))
  assert isinstance(back.likelihood.factor_trunk, list)
  model = build_model(back)
  assert hash(model) == hash(build_model(config)) and model == build_model(config)
