"""Registry of observation likelihoods: one entry per likelihood, all its facts.

A likelihood head is a flax module

  head(features, target=None, *, train=False, step=None) -> distrax.Distribution

* `features` [B, H, W, F]: the decoder trunk's output at image resolution.
* `target` [B, H, W, C] in [0, 1]: the image, when known (training,
  evaluation, reconstructions); None when decoding prior samples. Heads whose
  parameters are a closed-form function of the data (the optimal sigma of
  rybkin2021_sigma_vae_calibrated_decoders.txt) read it.
* `train`: True only inside the train step; `step`: the int32 train step
  (None outside training), for schedules.
* `z` [B, L]: the latent, passed only to heads whose __call__ declares a
  keyword `z=None` (the low-rank head with its own factor trunk reads it);
  other heads need not declare it.

The distribution's event shape may be any shape with H*W*C elements: [S]
(row-major over H, W, C) for the Gaussian ones, [H, W, C] for the discrete
ones, [H, W] for a grayscale structured one. The loop reshapes x to the event
shape for log_prob and reshapes mean() and samples back to images.

Beyond parameters, a head may keep
* running statistics in the flax collection STATS_COLLECTION, updated only
  when `train` is True (they live in TrainState.model_state, are
  checkpointed and are used when decoding); an int32 statistic named
  SWITCH_STEP is lowered by the loop when the evaluation ELBO stops
  improving (config.likelihood.switch_on_plateau);
* extra loss terms, sown as `self.sow(PENALTY_COLLECTION, name, scalar)` with
  the scalar already averaged over the batch and weighted: the loop adds them
  to the loss and logs each as `penalty_<name>`.

The head is built as `HeadClass(channels=C, **config.likelihood minus name)`:
the config field names are the head's dataclass field names and the
dataclass defaults are the only defaults. Add a likelihood by writing such a
module and calling `register_likelihood(name, Likelihood(...))`; the entry
also names the variance submodules (frozen while pretraining the mean), the
config checks and the entropy floor, so nothing else needs a change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax

from sosvae_jax.distributions.discrete import MIN_LOG_SCALE
from sosvae_jax.distributions.gaussian import OPTIMAL_VARIANCE_AXES
from sosvae_jax.distributions.lowrank import MEAN_GRADIENTS
from sosvae_jax.models import calibrated_heads
from sosvae_jax.models import discrete_heads
from sosvae_jax.models import structured_heads
from sosvae_jax.models.heads import DiagonalGaussianLikelihood
from sosvae_jax.models.heads import LowRankGaussianLikelihood

# (field, value) -> problems in the config checker's format.
FieldCheck = Callable[[str, Any], list[str]]
# (resolved fields, whole config) -> problems; for checks spanning fields.
ConfigCheck = Callable[[Mapping[str, Any], Any], list[str]]
# (resolved fields, event size S) -> (least entropy in nats, field setting it).
EntropyFloor = Callable[[Mapping[str, Any], int], 'tuple[float, str] | None']

# Fields of config.likelihood read by the train loop, not by the head: the
# switch of the stage on an ELBO plateau (lin2019 Algorithm 1).
PLATEAU_FIELDS = ('switch_on_plateau', 'plateau_tolerance', 'plateau_patience')
# Dataclass fields of every flax module that are no config fields.
_MODULE_FIELDS = ('channels', 'parent', 'name')


def problem(field: str, value: Any, why: str, fix: str) -> str:
  """One message of the config checker: field, value, why it is wrong, fix."""
  return f'config.likelihood.{field}={value!r}: {why}; {fix}.'


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def requires(ok: Callable[[Any], bool], why: str, fix: str) -> FieldCheck:
  """A field check: `why` and `fix` ('{field}' is filled in) unless ok(value)."""
  def check(field: str, value: Any) -> list[str]:
    return [] if ok(value) else [problem(field, value, why, fix.format(field=field))]
  return check


def positive(why: str, *, none_ok: bool = False) -> FieldCheck:
  """A field check: a number > 0 (or None when `none_ok`)."""
  return requires(
      lambda v: (v is None and none_ok) or (_is_number(v) and v > 0),
      f'must be > 0 ({why})', 'set --config.likelihood.{field} to a positive number'
      + (' or None' if none_ok else ''))


def int_at_least(low: int, why: str, fix: str) -> FieldCheck:
  """A field check: an int >= low."""
  return requires(lambda v: _is_int(v) and v >= low, why, fix)


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """A registry entry: everything about one likelihood.

  Attributes:
    head: the head module class; built as head(channels=C, **fields).
    rgb_head: the head for RGB images (C=3) where it differs from `head`.
    variance_heads: names of the submodules holding variance parameters
      (frozen during config.pretrain_steps, scaled by
      config.optimizer.variance_lr_scale).
    field_checks: {field: check of its value}.
    checks: checks spanning several fields or the rest of the config.
    entropy_floor: the least entropy p(x|z) can have, or None without one.
    discrete: log_prob is a probability mass over 8-bit levels (bits per
      dimension are -log_prob / (S ln 2)); otherwise a density on [0, 1].
    low_rank: the low-rank covariance N(mu, P P^T + D) of SOS-VAE (figures
      and observation-space tools need its factor P).
    loop_fields: fields of config.likelihood the train loop reads, not the
      head.
  """

  head: type[nn.Module]
  rgb_head: type[nn.Module] | None = None
  variance_heads: tuple[str, ...] = ()
  field_checks: Mapping[str, FieldCheck] = dataclasses.field(default_factory=dict)
  checks: tuple[ConfigCheck, ...] = ()
  entropy_floor: EntropyFloor | None = None
  discrete: bool = False
  low_rank: bool = False
  loop_fields: tuple[str, ...] = ()

  def head_class(self, channels: int | None) -> type[nn.Module]:
    return self.rgb_head if channels == 3 and self.rgb_head is not None else self.head

  def _classes(self, channels: int | None) -> tuple[type[nn.Module], ...]:
    if channels is None:  # Unknown image: either head.
      return tuple(c for c in (self.head, self.rgb_head) if c is not None)
    return (self.head_class(channels),)

  def field_names(self, channels: int | None) -> tuple[str, ...]:
    """The config fields of the head for C channels (None: of any head)."""
    names = []
    for cls in self._classes(channels):
      names += [f.name for f in dataclasses.fields(cls)
                if f.name not in _MODULE_FIELDS and f.name not in names]
    return tuple(names)

  def unknown_fields(self, cfg, channels: int | None) -> list[str]:
    valid = set(self.field_names(channels)) | set(self.loop_fields) | {'name'}
    return sorted(k for k in cfg.keys() if k not in valid)

  def fields(self, cfg, channels: int | None) -> dict[str, Any]:
    """The head's fields: dataclass defaults overridden by config.likelihood.

    Unknown fields are left out; `build` rejects them. A field without a
    default that the config lacks is absent.
    """
    out = {}
    for cls in self._classes(channels):
      for f in dataclasses.fields(cls):
        if f.name not in _MODULE_FIELDS and f.default is not dataclasses.MISSING:
          out.setdefault(f.name, f.default)
    names = self.field_names(channels)
    out.update({k: v for k, v in cfg.items() if k in names})
    return out

  def build(self, cfg, channels: int) -> nn.Module:
    """The head for config.likelihood `cfg` and images of `channels` channels."""
    unknown = self.unknown_fields(cfg, channels)
    if unknown:
      raise ValueError(
          f'config.likelihood has field(s) {unknown} that likelihood {cfg.name!r} '
          f'does not have; its fields are {sorted(self.field_names(channels))}.')
    # A config read back from config.json holds lists where a config file had
    # tuples; flax modules must be hashable (jit caches on them).
    head = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
            if k != 'name' and k not in self.loop_fields}
    return self.head_class(channels)(channels=channels, **head)

  def problems(self, config) -> list[str]:
    """Problems of config.likelihood for this entry, in the checker's format."""
    cfg = config.likelihood
    channels = _channels(config)
    names = self.field_names(channels)
    problems = [problem(k, cfg[k], f'likelihood {cfg.name!r} has no such field',
                        f'remove it; its fields are {names}')
                for k in self.unknown_fields(cfg, channels)]
    fields = self.fields(cfg, channels)
    for field, check in self.field_checks.items():
      if field in names:
        problems += check(field, fields.get(field))
    for check in self.checks:
      problems += check(fields, config)
    return problems

  def min_entropy(self, config) -> tuple[float, str] | None:
    """The least entropy (nats) of p(x|z) and the field setting it, or None."""
    shape = _image_shape(config)
    if self.entropy_floor is None or shape is None:
      return None
    return self.entropy_floor(self.fields(config.likelihood, shape[-1]), math.prod(shape))


def _image_shape(config) -> tuple[int, int, int] | None:
  """config.data.image_shape if it is three positive ints, else None."""
  shape = tuple(config.data.get('image_shape', ()) or ())
  ok = len(shape) == 3 and all(_is_int(n) and n > 0 for n in shape)
  return shape if ok else None


def _channels(config) -> int | None:
  shape = _image_shape(config)
  return None if shape is None else shape[-1]


LIKELIHOODS: dict[str, Likelihood] = {}


def register_likelihood(name: str, entry: Likelihood) -> None:
  """Adds `entry` as config.likelihood.name == `name`."""
  if name in LIKELIHOODS:
    raise ValueError(f'A likelihood named {name!r} is registered already.')
  LIKELIHOODS[name] = entry


def get_likelihood(cfg, channels: int) -> nn.Module:
  """Builds the head module named by cfg.name (config.likelihood)."""
  if cfg.name not in LIKELIHOODS:
    raise ValueError(
        f'config.likelihood.name={cfg.name!r} is not a known likelihood; '
        f'choose one of {sorted(LIKELIHOODS)}.')
  return LIKELIHOODS[cfg.name].build(cfg, channels)


def likelihood_section(name: str, values: Mapping[str, Any],
                       channels: int) -> dict[str, Any]:
  """config.likelihood for `name`: every field of its head, at the value in
  `values` where that has it, else at the head's default.

  Switches a config to another likelihood while keeping the values of the
  fields both share (the others would be unknown fields of the new head);
  the new head's own fields are present, so they can be overridden next.
  """
  entry = LIKELIHOODS[name]
  loop = {k: v for k, v in values.items() if k in entry.loop_fields}
  return {'name': name, **entry.fields(values, channels), **loop}


def variance_parameter_mask(params, likelihood_name: str) -> Any:
  """True for the parameters of the likelihood's variance heads, else False."""
  names = set(LIKELIHOODS[likelihood_name].variance_heads)

  def is_variance(path, _) -> bool:
    return any(getattr(k, 'key', None) in names for k in path)
  return jax.tree_util.tree_map_with_path(is_variance, params)


# ----------------------------------------------------------------------------
# The Gaussians of SOS-VAE.
# ----------------------------------------------------------------------------
def diagonal_entropy_floor(fields: Mapping[str, Any], size: int) -> tuple[float, str] | None:
  """Sigma = P P^T + D with D >= d I: entropy >= 0.5 * S * (log(2 pi e) + log d).

  P P^T only adds to the log-determinant. d is fixed_diag, or with a learned
  diagonal (fixed_diag None or absent) its floor min_variance. None for an
  invalid d.
  """
  field = 'min_variance' if fields.get('fixed_diag') is None else 'fixed_diag'
  d = fields.get(field)
  if not _is_number(d) or d <= 0:
    return None
  return 0.5 * size * (math.log(2 * math.pi * math.e) + math.log(d)), field


_MIN_VARIANCE = positive('the floor of the learned variances keeps log(variance) finite')


def _check_rank(fields: Mapping[str, Any], config) -> list[str]:
  shape = _image_shape(config)
  rank = fields.get('rank')
  if shape is None or (_is_int(rank) and 0 < rank < math.prod(shape)):
    return []
  size = math.prod(shape)
  h, w, c = shape
  return [problem(
      'rank', rank,
      f'the factor P of the low-rank likelihood needs 1 <= rank < S, the event size '
      f'S = H*W*C = {h}*{w}*{c} = {size} (rank >= S costs more than a dense covariance)',
      f'pass --config.likelihood.rank between 1 and {size - 1} (the paper uses 25)')]


def _check_learned_floor(fields: Mapping[str, Any], config) -> list[str]:
  del config  # min_variance matters only with a learned diagonal.
  if fields.get('fixed_diag') is not None:
    return []
  return _MIN_VARIANCE('min_variance', fields.get('min_variance'))


def _check_factor_trunk(fields: Mapping[str, Any], config) -> list[str]:
  """None, or positive channel counts whose upsamplings reach the image size."""
  trunk = fields.get('factor_trunk')
  if trunk is None:
    return []
  fix = 'pass None (P from the trunk features) or e.g. --config.likelihood.{field}=(16,32)'
  if not (isinstance(trunk, (tuple, list)) and trunk
          and all(_is_int(c) and c > 0 for c in trunk)):
    return [problem('factor_trunk', trunk, 'the channels of the factor decoder must '
                    'be a non-empty tuple of positive ints', fix.format(field='factor_trunk'))]
  shape = _image_shape(config)
  step = 2 ** len(trunk)
  if shape is None or not (shape[0] % step or shape[1] % step):
    return []
  return [problem('factor_trunk', trunk, f'each entry doubles the image side, so '
                  f'H={shape[0]} and W={shape[1]} must be divisible by 2**{len(trunk)}',
                  'use fewer entries')]


def _check_factor_basis(fields: Mapping[str, Any], config) -> list[str]:
  """None, or K with rank <= K <= S, and not together with factor_trunk."""
  basis = fields.get('factor_basis')
  if basis is None:
    return []
  if fields.get('factor_trunk') is not None:
    return [problem('factor_basis', basis, 'P comes either from a conv factor decoder '
                    f'(factor_trunk={fields.get("factor_trunk")!r}) or from a basis '
                    'decoder, not both', 'set one of them to None')]
  rank = fields.get('rank')
  shape = _image_shape(config)
  size = math.prod(shape) if shape else None
  if _is_int(basis) and (not _is_int(rank) or basis >= rank) and (
      size is None or basis <= size):
    return []
  return [problem('factor_basis', basis, 'P = U A(z) spans at most K image-space '
                  f'directions, so the basis size K must be an int with rank <= K'
                  + (f' <= S = {size}' if size else ''),
                  f'pass None, or e.g. --config.likelihood.factor_basis={4 * rank if _is_int(rank) else 100}')]


_CAPACITANCE_JITTER = requires(
    lambda v: _is_number(v) and 0 <= v < 1,
    'the jitter of a failed capacitance Cholesky, relative to its mean diagonal, '
    'must be 0 (off: the exact likelihood) or a number in (0, 1)',
    'pass e.g. --config.likelihood.{field}=1e-6, or 0 to switch it off')

_MEAN_GRADIENT = requires(
    lambda v: v in MEAN_GRADIENTS,
    f'where the mean\'s gradient comes from must be one of {MEAN_GRADIENTS} '
    '(full: the exact likelihood; diagonal: the mean is fitted as with D alone)',
    'pass --config.likelihood.{field}=full or =diagonal')

register_likelihood('diagonal_gaussian', Likelihood(
    DiagonalGaussianLikelihood, variance_heads=('diag_head',),
    field_checks={'min_variance': _MIN_VARIANCE},
    entropy_floor=diagonal_entropy_floor))
register_likelihood('lowrank_gaussian', Likelihood(
    LowRankGaussianLikelihood,
    variance_heads=('diag_head', 'factor_head', 'factor_decoder'),
    field_checks={'fixed_diag': positive(
        'D = fixed_diag * I must be positive definite; None = a learned diagonal',
        none_ok=True), 'capacitance_jitter': _CAPACITANCE_JITTER,
        'mean_gradient': _MEAN_GRADIENT},
    checks=(_check_rank, _check_learned_floor, _check_factor_trunk, _check_factor_basis),
    entropy_floor=diagonal_entropy_floor, low_rank=True))


# ----------------------------------------------------------------------------
# Calibrated Gaussians (sigma-VAE, Lin et al.), discrete and Student-t heads.
# ----------------------------------------------------------------------------
_INIT_VARIANCE = positive('the starting variance (and the running average before '
                          'the first step)')
_MIN_LOG_SIGMA = requires(
    lambda v: v is None or _is_number(v),
    'the soft floor of log sigma must be a number or None (no clip)',
    'pass e.g. --config.likelihood.{field}=-6')
_DECAY = requires(
    lambda v: _is_number(v) and 0 <= v < 1,
    'the running-average decay must be in [0, 1) (1 would never move from the start)',
    'pass e.g. 0.99')
_SIGMA_FIELDS = {'init_variance': _INIT_VARIANCE, 'min_log_sigma': _MIN_LOG_SIGMA}


def _check_init_df(fields: Mapping[str, Any], config) -> list[str]:
  del config  # The start of a learned df only.
  init_df = fields.get('init_df')
  if fields.get('student_t_df') is not None or (_is_number(init_df) and init_df > 1):
    return []
  return [problem('init_df', init_df, 'the learned df is 1 + softplus(raw) > 1, so its '
                  'start must be > 1', 'pass e.g. --config.likelihood.init_df=3')]


register_likelihood('gaussian_fixed_sigma', Likelihood(
    calibrated_heads.GaussianFixedSigma,
    field_checks={'sigma': positive('the fixed standard deviation of p(x|z)')}))
register_likelihood('gaussian_shared_sigma', Likelihood(
    calibrated_heads.GaussianSharedSigma, variance_heads=('sigma_head',),
    field_checks=_SIGMA_FIELDS))
register_likelihood('gaussian_pixel_sigma', Likelihood(
    calibrated_heads.GaussianPixelSigma, variance_heads=('sigma_head',),
    field_checks=_SIGMA_FIELDS))
register_likelihood('gaussian_optimal_sigma', Likelihood(
    calibrated_heads.GaussianOptimalSigma,
    field_checks={
        **_SIGMA_FIELDS, 'running_average_decay': _DECAY,
        'optimal_sigma_axes': requires(
            lambda v: v in OPTIMAL_VARIANCE_AXES,
            f'unknown, the choices are {tuple(OPTIMAL_VARIANCE_AXES)}',
            '--config.likelihood.{field}=shared or another of them')}))
register_likelihood('gaussian_two_stage', Likelihood(
    calibrated_heads.GaussianTwoStage, variance_heads=('variance_head',),
    field_checks={
        'init_variance': _INIT_VARIANCE, 'running_average_decay': _DECAY,
        'switch_step': int_at_least(
            0, 'the step at which stage two starts must be an integer >= 0',
            'pass e.g. --config.likelihood.switch_step=3750'),
        'dataset_variance': positive(
            'the stage-two floor is half of it; None = the stage-one running average',
            none_ok=True)},
    loop_fields=PLATEAU_FIELDS))
register_likelihood('bernoulli', Likelihood(discrete_heads.BernoulliHead))
register_likelihood('categorical', Likelihood(discrete_heads.CategoricalHead,
                                              discrete=True))
register_likelihood('bitwise_categorical', Likelihood(
    discrete_heads.BitwiseCategoricalHead, discrete=True))
register_likelihood('logistic_mixture', Likelihood(
    discrete_heads.LogisticMixtureHead, discrete=True,
    field_checks={
        'num_mixtures': int_at_least(
            1, 'the number of logistic components must be an integer >= 1',
            'pass e.g. --config.likelihood.num_mixtures=10'),
        'init_scale': positive('the starting scale of every logistic component'),
        'min_log_scale': requires(_is_number, 'the floor of the log-scales must be a '
                                  'number', f'pass e.g. {MIN_LOG_SCALE}')}))
register_likelihood('student_t', Likelihood(
    discrete_heads.StudentTHead, variance_heads=('scale_head',),
    field_checks={
        **_SIGMA_FIELDS,
        'student_t_df': positive('the degrees of freedom; None = learned', none_ok=True)},
    checks=(_check_init_df,)))


# ----------------------------------------------------------------------------
# Structured precision (Dorta): C = 1 structured Y over [H, W]; C = 3 YCbCr
# (structured Y, low-resolution Cb, Cr).
# ----------------------------------------------------------------------------
def _check_reach(fields: Mapping[str, Any], config) -> list[str]:
  """The dilated neighbourhood must fit inside the image."""
  shape = _image_shape(config)
  k, d = fields.get('kernel_size'), fields.get('dilation')
  if (shape is None or not (_is_int(k) and _is_int(d) and k >= 3 and d >= 1)
      or d * (k // 2) < min(shape[:2])):
    return []
  return [problem('dilation', d, f'with kernel_size={k} the neighbourhood reaches '
                  f'{d * (k // 2)} pixels, beyond the {shape[0]}x{shape[1]} image',
                  'lower kernel_size or dilation')]


def _check_chroma_factor(fields: Mapping[str, Any], config) -> list[str]:
  shape = _image_shape(config)
  if shape is None or shape[-1] != 3:
    return []
  f = fields.get('chroma_factor')
  if _is_int(f) and f >= 1 and not shape[0] % f and not shape[1] % f:
    return []
  return [problem('chroma_factor', f, f'Cb and Cr are modelled at (H/f, W/f), so f '
                  f'must be a positive int dividing H={shape[0]} and W={shape[1]}',
                  'pass e.g. --config.likelihood.chroma_factor=4 for 64x64 images')]


def _check_gamma_prior(fields: Mapping[str, Any], config) -> list[str]:
  del config  # Its parameters matter only when the prior is on.
  if not fields.get('gamma_prior_weight'):
    return []
  check = requires(lambda v: _is_number(v) and v > 0, 'the Gamma prior needs a '
                   'positive concentration and rate', 'pass e.g. 1.0')
  return [p for f in ('gamma_concentration', 'gamma_rate') for p in check(f, fields.get(f))]


_PENALTY_WEIGHT = requires(
    lambda v: _is_number(v) and v >= 0,
    'a penalty weight must be >= 0 (a negative weight rewards the penalised term)',
    'pass --config.likelihood.{field}=0 to switch it off')

register_likelihood('structured_gaussian', Likelihood(
    structured_heads.StructuredGaussianLikelihood,
    rgb_head=structured_heads.StructuredYCbCrLikelihood,
    variance_heads=('precision_diag_head', 'precision_offdiag_head', 'diag_head'),
    field_checks={
        'kernel_size': requires(
            lambda k: _is_int(k) and k >= 3 and k % 2 == 1,
            'the n_f x n_f neighbourhood must be an odd int >= 3 (1 would be a '
            'diagonal Gaussian, even sizes have no centre pixel)',
            'pass e.g. --config.likelihood.kernel_size=3 or 5'),
        'dilation': int_at_least(
            1, 'the spacing of the neighbourhood (section 4.3) must be an int >= 1',
            'pass --config.likelihood.dilation=1 (dense) or 2'),
        'num_basis': int_at_least(
            0, 'the number of learnable basis kernels must be an int >= 0 (0 = no basis)',
            'pass --config.likelihood.num_basis=0 or e.g. 4'),
        'chroma_detail_scale': requires(
            lambda v: _is_number(v) and v > 0,
            'the scale of the within-block chroma detail must be > 0', 'pass e.g. 0.01'),
        'variance_minimiser_start': _PENALTY_WEIGHT,
        'variance_minimiser_end': _PENALTY_WEIGHT,
        'gamma_prior_weight': _PENALTY_WEIGHT,
        'variance_minimiser_switch_step': int_at_least(
            0, 'the step at which alpha drops from variance_minimiser_start to '
            'variance_minimiser_end must be an int >= 0',
            'pass e.g. 10 epochs in steps, 10 * 60000 // batch_size'),
        'init_variance': requires(
            lambda v: _is_number(v) and v > 0,
            'the starting pixel variance sets log_diag = -log(init_variance)/2',
            'pass e.g. 0.05')},
    checks=(_check_reach, _check_chroma_factor, _check_gamma_prior),
    loop_fields=PLATEAU_FIELDS))
