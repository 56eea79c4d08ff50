"""Mixed precision: a bfloat16 network with float32 likelihood maths.

`config.model.dtype='bfloat16'` runs the encoder and decoder trunk in
bfloat16 (parameters stay float32); the likelihood heads cast their outputs
to float32, so Cholesky factors, log-determinants, triangular solves, logs
and logsumexps run in float32 (numerics.py `compute_dtype`). Checked here on
the same parameters and batch:

* log p(x|z) of the bfloat16 model is within `_RTOL` of the float32 model;
* the jaxpr of the bfloat16 model has bfloat16 convolutions (the network
  really is in bfloat16), but no likelihood primitive sees a bfloat16 input.
"""

from __future__ import annotations

import jax
from jax.extend import core as jex_core
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import default
from sosvae_jax import input_pipeline
from sosvae_jax import train_state
from sosvae_jax.models import build_model
from sosvae_jax.models import likelihood_section

# bfloat16 keeps 8 significant bits: unit roundoff 2^-8 = 3.9e-3 per
# operation. log p(x|z) sums S = 784 terms whose rounding errors mostly
# cancel; measured relative differences on these random networks: 1.1e-4
# (low-rank), 2e-5 (logistic mixture), 4.6e-4 (pixel-wise Gaussian). The
# tolerance is the unit roundoff plus margin: a float32-vs-bfloat16 error
# in the likelihood maths itself (e.g. a Cholesky of a d = 1e-5 capacitance
# matrix in bfloat16) is orders of magnitude larger.
_RTOL = 5e-3
# Likelihoods covering the float32-sensitive maths: Cholesky + log-det
# (low-rank), logsumexp over mixture components (logistic mixture), and
# triangular solves with the sparse precision Cholesky (structured). Three
# only: each costs three compiles on a 2-core test machine.
_NAMES = ('lowrank_gaussian', 'logistic_mixture', 'structured_gaussian')
# Primitives of likelihood maths that must never take bfloat16 inputs.
_FLOAT32_ONLY = ('cholesky', 'triangular_solve', 'log', 'log1p', 'exp', 'expm1',
                 'reduce_max', 'logistic', 'lgamma', 'digamma', 'div', 'sqrt',
                 'rsqrt', 'reduce_sum', 'lu', 'eigh')
_BATCH = 2


def _model(name: str, dtype: str):
  """(model of the smoke config with likelihood `name` computing in dtype, x)."""
  config = default.get_config('smoke')
  config.likelihood = ml_collections.ConfigDict(likelihood_section(name, config.likelihood, 1))
  # Heads with visible weights, so the network output shapes the likelihood.
  config.likelihood.head_init_stddev = 0.05
  config.model.dtype = dtype
  x = input_pipeline.preprocess(jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (_BATCH,) + tuple(config.data.image_shape), dtype=np.uint8)))
  return build_model(config), x


def _models(name: str):
  """(float32 model, bfloat16 model, shared float32 variables, x)."""
  model32, x = _model(name, 'float32')
  variables = train_state.call_init(
      model32.init, {'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)}, x)
  variables = {k: v for k, v in variables.items() if k not in ('penalties',)}
  return model32, _model(name, 'bfloat16')[0], variables, x


def _log_likelihood(model, variables, x):
  out = model.apply(variables, x, rngs={'sample': jax.random.PRNGKey(2)})
  dist = out.observation
  return dist.log_prob(x.reshape(x.shape[:1] + tuple(dist.event_shape)))  # (B,)


def _bf16_primitives(jaxpr) -> dict[str, int]:
  """Primitive name -> count of equations with a bfloat16 input (recursive)."""
  counts: dict[str, int] = {}

  def walk(j):
    for eqn in j.eqns:
      if any(getattr(getattr(v, 'aval', None), 'dtype', None) == jnp.bfloat16
             for v in eqn.invars):
        counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
      for sub in jex_core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr)
  return counts


def _primitive_dtypes(jaxpr, name: str) -> set:
  """Input dtypes of every equation of primitive `name` (recursive)."""
  found = set()

  def walk(j):
    for eqn in j.eqns:
      if eqn.primitive.name == name:
        found.update(str(v.aval.dtype) for v in eqn.invars)
      for sub in jex_core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr)
  return found


_CACHE: dict[str, dict] = {}


def _case(name: str) -> dict:
  """Both log-likelihoods and the bfloat16 jaxpr of one likelihood (cached)."""
  if name not in _CACHE:
    model32, model16, variables, x = _models(name)
    _CACHE[name] = dict(
        ll32=jax.jit(lambda v: _log_likelihood(model32, v, x))(variables),
        ll16=jax.jit(lambda v: _log_likelihood(model16, v, x))(variables),
        jaxpr=jax.make_jaxpr(lambda v: _log_likelihood(model16, v, x))(variables).jaxpr)
  return _CACHE[name]


@pytest.mark.slow
@pytest.mark.parametrize('name', _NAMES)
def test_bfloat16_log_likelihood_close_to_float32(name):
  ll32, ll16 = _case(name)['ll32'], _case(name)['ll16']
  assert ll32.dtype == ll16.dtype == jnp.float32
  ll32, ll16 = np.asarray(ll32, np.float64), np.asarray(ll16, np.float64)
  assert np.all(np.isfinite(ll16))
  rel = np.abs(ll16 - ll32) / np.abs(ll32)
  assert np.all(rel <= _RTOL), (name, rel)
  # Not vacuous: the bfloat16 network really changes the numbers.
  assert np.any(ll16 != ll32), name


@pytest.mark.slow
@pytest.mark.parametrize('name', _NAMES)
def test_likelihood_maths_stays_float32(name):
  jaxpr = _case(name)['jaxpr']
  bf16 = _bf16_primitives(jaxpr)
  assert bf16.get('conv_general_dilated', 0) > 0, bf16  # the network is bf16
  assert not set(bf16) & set(_FLOAT32_ONLY), bf16
  if name == 'lowrank_gaussian':  # the capacitance Cholesky and its solves
    assert _primitive_dtypes(jaxpr, 'cholesky') == {'float32'}
    assert _primitive_dtypes(jaxpr, 'triangular_solve') == {'float32'}


def test_bfloat16_params_stay_float32():
  # Only the computation is bfloat16: parameters (and so the optimizer
  # state and checkpoints) stay float32.
  model16, x = _model('lowrank_gaussian', 'bfloat16')
  params16 = jax.eval_shape(model16.init, {'params': jax.random.PRNGKey(0),
                                           'sample': jax.random.PRNGKey(1)}, x)['params']
  dtypes = {str(p.dtype) for p in jax.tree.leaves(params16)}
  assert dtypes == {'float32'}, dtypes
