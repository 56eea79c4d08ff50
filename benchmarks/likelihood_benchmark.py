"""Low-rank normal log_prob + gradient: ours against its peers, side by side.

  python benchmarks/likelihood_benchmark.py            # 20 rounds per shape
  python benchmarks/likelihood_benchmark.py --quick    # 5 rounds, ~1-2 min on CPU

One process, float32, rank R = 25, three (event size S, batch B) shapes:
(784, 64), (3072, 32), (12288, 16). Every method computes the summed
log_prob of the batch and its gradient w.r.t. loc and the factor P, on the
same arrays; each is compiled (JAX) and warmed up, then the methods are
called in rounds, one call of each per round, so that a burst of load from
other processes hits all of them alike. Ratios are medians of within-round
ratios; times are medians.

  ours         sosvae_jax lowrank_log_prob: hand-written custom VJP, ridge form
  autodiff     the same maths by plain jax autodiff (lowrank_log_prob_autodiff)
  torch        torch.distributions.LowRankMultivariateNormal (--torch_threads,
               default 1), validate_args=False, loss.backward()
  tfp          tfp (JAX substrate) MultivariateNormalDiagPlusLowRankCovariance,
               the same covariance form P P^T + diag(d)
  numpyro      numpyro.distributions.LowRankMultivariateNormal, when installed
  distrax_scale distrax.MultivariateNormalDiagPlusLowRank(loc, sqrt d, P, P):
               low rank on the *scale*, another distribution; cost only

FLOP/s of `ours` counts 4 B S R^2 (2 B S R^2 for the Gram P^T D^-1 P, 2 B S
R^2 for the backward's P C^-1 product: the least any Woodbury log_prob +
gradient needs) against the float32 peak of a 2048^3 matmul in JAX, timed in
the same rounds (so under the same load). `dots` times those two batched
matmuls alone, at the same shapes and in the same rounds: the share of the
peak XLA's dot reaches on them bounds what any implementation on it can. Accuracy against float64: the
relative error of the batch's summed log_prob, and max |g - g64| / max |g64|
of the two gradients; the float64 reference is a separate numpy Woodbury
implementation (checked against a dense scipy Cholesky at S = 784).

JAX's own threading is left as is (XLA:CPU uses every core it is given);
set XLA_FLAGS='--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1' to pin it to one thread. On 2 cores its
multi-threaded runtime has been seen to deadlock (no CPU used, no return)
in the timed calls at S = 3072 when tfp's program runs beside ours: a call
that has not returned after --call_timeout seconds ends the run with exit
code 3 and that advice, instead of waiting for ever. The optional peers
need the `benchmarks` extra of pyproject.toml (torch, numpyro); a peer that
is not installed is skipped and said so.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from typing import Callable

from absl import app
from absl import flags
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.stats

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli
from sosvae_jax.distributions import lowrank

FLAGS = flags.FLAGS
flags.DEFINE_list('shapes', ['784x64', '3072x32', '12288x16'], 'SxB: event size x batch.')
flags.DEFINE_integer('rank', 25, 'Rank R of the factor P.')
flags.DEFINE_integer('repeats', 20, 'Rounds per shape (one call of every method each).')
flags.DEFINE_list('methods', ['ours', 'autodiff', 'torch', 'tfp', 'numpyro', 'distrax_scale'],
                  'Methods to time (missing optional peers are skipped).')
flags.DEFINE_integer('torch_threads', 1, 'torch.set_num_threads.')
flags.DEFINE_integer('peak_size', 2048, 'Size n of the n^3 float32 matmul giving the peak.')
flags.DEFINE_bool('quick', False, 'Short run: --repeats=5 unless given.')
flags.DEFINE_integer('seed', 0, 'Seed of the random inputs.')
flags.DEFINE_float('call_timeout', 300.0, 'Seconds one call (compile, warm-up or timed) may '
                   'take before the run is ended as stuck (exit code 3).')
cli.DEFINE_path('out', None, 'JSON output; default benchmarks/results/likelihood_<platform>.json.')

# Goals of the project (benchmarks/README.md).
GOALS = {'torch': 2.5, 'tfp': 4.0}
GOAL_PEAK_SHARE, GOAL_PEAK_SIZE = 0.35, 12288
PEERS_OF_OURS = ('autodiff', 'torch', 'tfp', 'numpyro', 'distrax_scale')


def make_inputs(batch: int, size: int, rank: int, seed: int) -> dict[str, np.ndarray]:
  """Decoder-like float32 parameters and an x drawn from N(loc, P P^T + diag(d))."""
  rng = np.random.default_rng(seed)
  loc = rng.uniform(0, 1, (batch, size))  # (B, S)
  factor = 0.3 / np.sqrt(rank) * rng.standard_normal((batch, size, rank))  # (B, S, R)
  diag = rng.uniform(0.01, 0.1, (batch, size))  # (B, S)
  x = (loc + np.einsum('bsr,br->bs', factor, rng.standard_normal((batch, rank)))
       + np.sqrt(diag) * rng.standard_normal((batch, size)))
  return {k: v.astype(np.float32) for k, v in dict(x=x, loc=loc, factor=factor, diag=diag).items()}


# ----------------------------------------------------------------------------
# float64 reference: numpy Woodbury, independent of the package's code.
# ----------------------------------------------------------------------------
def reference_float64(x, loc, factor, diag) -> tuple[float, np.ndarray, np.ndarray]:
  """Summed log_prob and its gradients w.r.t. loc [B, S] and P [B, S, R]."""
  x, loc, factor, diag = (np.asarray(a, np.float64) for a in (x, loc, factor, diag))
  total, g_loc, g_factor = 0.0, np.empty_like(loc), np.empty_like(factor)
  size, rank = factor.shape[-2:]
  for b in range(loc.shape[0]):
    p, d, r = factor[b], diag[b], x[b] - loc[b]
    p_d = p / d[:, None]  # D^-1 P
    cap = np.eye(rank) + p.T @ p_d
    cho = scipy.linalg.cho_factor(cap, lower=True)
    alpha = r / d - p_d @ scipy.linalg.cho_solve(cho, p_d.T @ r)  # Sigma^-1 r
    log_det = np.sum(np.log(d)) + 2 * np.sum(np.log(np.diag(cho[0])))
    total += -0.5 * (size * math.log(2 * math.pi) + log_det + r @ alpha)
    g_loc[b] = alpha
    prec_p = p_d @ scipy.linalg.cho_solve(cho, np.eye(rank))  # Sigma^-1 P = D^-1 P C^-1
    g_factor[b] = np.outer(alpha, alpha @ p) - prec_p
  return total, g_loc, g_factor


def check_reference_dense(inputs: dict[str, np.ndarray]) -> float:
  """Largest relative gap of reference_float64 to a dense scipy Cholesky (image 0)."""
  x, loc, factor, diag = (inputs[k][:1].astype(np.float64) for k in ('x', 'loc', 'factor', 'diag'))
  cov = factor[0] @ factor[0].T + np.diag(diag[0])
  cho = scipy.linalg.cho_factor(cov, lower=True)
  alpha = scipy.linalg.cho_solve(cho, x[0] - loc[0])
  dense_lp = float(scipy.stats.multivariate_normal(loc[0], cov).logpdf(x[0]))
  dense_gp = (np.outer(alpha, alpha) - scipy.linalg.cho_solve(cho, np.eye(len(cov)))) @ factor[0]
  lp, g_loc, g_factor = reference_float64(x, loc, factor, diag)
  return max(abs(lp - dense_lp) / abs(dense_lp), np.abs(g_loc[0] - alpha).max() / np.abs(alpha).max(),
             np.abs(g_factor[0] - dense_gp).max() / np.abs(dense_gp).max())


# ----------------------------------------------------------------------------
# The methods: each returns call() -> (summed log_prob, grad loc, grad P).
# ----------------------------------------------------------------------------
def _jax_case(log_prob: Callable, inputs: dict[str, np.ndarray]) -> Callable:
  """jit(value_and_grad) w.r.t. (loc, P) of log_prob(x, loc, P, d).sum()."""
  loss = lambda loc, factor, x, diag: jnp.sum(log_prob(x, loc, factor, diag))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  args = tuple(jnp.asarray(inputs[k]) for k in ('loc', 'factor', 'x', 'diag'))
  call = lambda: jax.block_until_ready(step(*args))
  call()  # compile and warm up
  return lambda: (lambda out: (out[0], *out[1]))(call())


def _tfp_log_prob(x, loc, factor, diag):
  from tensorflow_probability.substrates import jax as tfp  # pylint: disable=g-import-not-at-top
  dist = tfp.distributions.MultivariateNormalDiagPlusLowRankCovariance(
      loc=loc, cov_diag_factor=diag, cov_perturb_factor=factor)
  return dist.log_prob(x)


def _numpyro_log_prob(x, loc, factor, diag):
  import numpyro.distributions  # pylint: disable=g-import-not-at-top
  return numpyro.distributions.LowRankMultivariateNormal(loc, factor, diag).log_prob(x)


def _distrax_scale_log_prob(x, loc, factor, diag):
  # Scale diag(sqrt d) + P P^T: a different distribution, comparable cost.
  return distrax.MultivariateNormalDiagPlusLowRank(loc, jnp.sqrt(diag), factor, factor).log_prob(x)


def _torch_case(inputs: dict[str, np.ndarray]) -> Callable:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(FLAGS.torch_threads)
  x, diag = (torch.from_numpy(inputs[k]) for k in ('x', 'diag'))
  loc, factor = (torch.from_numpy(inputs[k]).requires_grad_() for k in ('loc', 'factor'))

  def call():
    loc.grad = factor.grad = None
    dist = torch.distributions.LowRankMultivariateNormal(loc, factor, diag, validate_args=False)
    total = dist.log_prob(x).sum()
    total.backward()
    return total.detach().numpy(), loc.grad.numpy(), factor.grad.numpy()

  call()
  return call


JAX_METHODS = {
    'ours': lowrank.lowrank_log_prob,
    'autodiff': lowrank.lowrank_log_prob_autodiff,
    'tfp': _tfp_log_prob,
    'numpyro': _numpyro_log_prob,
    'distrax_scale': _distrax_scale_log_prob,
}


def build_case(method: str, inputs: dict[str, np.ndarray]) -> Callable:
  if method == 'torch':
    return _torch_case(inputs)
  return _jax_case(JAX_METHODS[method], inputs)


def available(method: str) -> str | None:
  """None if the method can run here, else why not."""
  module = {'torch': 'torch', 'numpyro': 'numpyro'}.get(method)
  if module is None:
    return None if method in JAX_METHODS else 'unknown method'
  try:
    __import__(module)
  except ImportError as e:
    return f'not installed ({e}); pip install -e .[benchmarks]'
  return None


def dots_case(batch: int, size: int, rank: int) -> Callable:
  """The two batched matmuls any Woodbury log_prob + gradient needs, alone:
  the Gram of Z = [P/sqrt(d) | r/sqrt(d)] [B, S, R+1] and the product of Z
  with an [R+1, R+1] matrix per image. Their time is a floor for an
  implementation built on XLA's dot, and their share of the peak a ceiling."""
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((batch, size, rank + 1)), jnp.float32)
  m = jnp.asarray(rng.standard_normal((batch, rank + 1, rank + 1)), jnp.float32)
  dots = jax.jit(lambda z, m: (jnp.einsum('bsr,bsq->brq', z, z),
                               jnp.einsum('bsr,brq->bsq', z, m)))
  jax.block_until_ready(dots(z, m))
  return lambda: jax.block_until_ready(dots(z, m))


def peak_case(n: int) -> Callable:
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(a))
  return lambda: jax.block_until_ready(matmul(a))


# ----------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------
STUCK = 3  # exit code of a run ended by the call watchdog


class Watchdog:
  """Ends the process (exit code STUCK, one message) when the code inside a
  `with Watchdog(what, seconds)` block has not finished after `seconds`.

  A jitted call blocked in a deadlocked XLA:CPU runtime never returns and
  never raises, so the timer thread is the only one that can act.
  """

  def __init__(self, what: str, seconds: float):
    self._what, self._seconds = what, seconds
    self._timer = None

  def _fire(self) -> None:
    sys.stderr.write(
        f'\nStuck: {self._what} has not returned after {self._seconds:g} s. XLA:CPU\'s '
        'multi-threaded runtime can deadlock on few cores; rerun with XLA_FLAGS='
        '"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1", or without '
        'this method (--methods), or raise --call_timeout if the machine is merely slow.\n')
    sys.stderr.flush()
    os._exit(STUCK)  # the main thread is blocked inside the runtime

  def __enter__(self):
    self._timer = threading.Timer(self._seconds, self._fire)
    self._timer.daemon = True
    self._timer.start()
    return self

  def __exit__(self, *exc):
    self._timer.cancel()


def time_rounds(calls: dict[str, Callable], repeats: int,
                timeout: float | None = None) -> dict[str, list[float]]:
  """Seconds per call, one call of every method per round; a call that
  takes longer than `timeout` seconds (default --call_timeout) ends the run."""
  timeout = FLAGS.call_timeout if timeout is None else timeout
  times = {m: [] for m in calls}
  for r in range(repeats):
    for method, call in calls.items():
      with Watchdog(f'{method} (round {r + 1})', timeout):
        t0 = time.perf_counter()
        call()
        times[method].append(time.perf_counter() - t0)
  return times


def accuracy(outputs, reference) -> dict[str, float]:
  value, g_loc, g_factor = (np.asarray(o, np.float64) for o in outputs)
  ref_value, ref_loc, ref_factor = reference
  rel = lambda got, want: float(np.abs(got - want).max() / np.abs(want).max())
  return {'log_prob_rel': abs(float(value) - ref_value) / abs(ref_value),
          'grad_loc_rel': rel(g_loc, ref_loc), 'grad_factor_rel': rel(g_factor, ref_factor)}


def measure_shape(size: int, batch: int, methods: list[str], peak: Callable) -> dict:
  """Times, within-round ratios, FLOP/s and accuracy at one (S, B)."""
  rank = FLAGS.rank
  inputs = make_inputs(batch, size, rank, FLAGS.seed)
  reference = reference_float64(**inputs)
  calls = {}
  for m in methods:
    with Watchdog(f'compiling and warming up {m} at S={size} B={batch}', FLAGS.call_timeout):
      calls[m] = build_case(m, inputs)
  row = {'size': size, 'batch': batch, 'rank': rank,
         'accuracy': {m: accuracy(call(), reference) for m, call in calls.items()}}
  times = time_rounds({**calls, 'peak': peak, 'dots': dots_case(batch, size, rank)},
                      FLAGS.repeats)
  row['median_ms'] = {m: 1e3 * statistics.median(t) for m, t in times.items()}
  row['times_s'] = times
  row['ratio_to_ours'] = {
      m: statistics.median(np.divide(times[m], times['ours']).tolist())
      for m in methods if m != 'ours'}
  flops, peak_flops = 4 * batch * size * rank**2, 2 * FLAGS.peak_size**3
  row['ours_gflops'] = flops / statistics.median(times['ours']) / 1e9
  row['peak_gflops'] = peak_flops / statistics.median(times['peak']) / 1e9
  row['ours_peak_share'] = statistics.median(
      (flops / np.array(times['ours'])) / (peak_flops / np.array(times['peak'])))
  row['dots_peak_share'] = statistics.median(
      (flops / np.array(times['dots'])) / (peak_flops / np.array(times['peak'])))
  row['ours_over_dots'] = statistics.median(np.divide(times['ours'], times['dots']).tolist())
  return row


# ----------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------
def format_tables(rows: list[dict], methods: list[str]) -> str:
  peers = [m for m in methods if m != 'ours']
  lines = ['median ms per call (log_prob + grad w.r.t. loc and P, summed over the batch):', '',
           '| S | B | ' + ' | '.join(methods) + ' | matmul peak ms |',
           '|---|---|' + '---|' * (len(methods) + 1)]
  for r in rows:
    lines.append(f'| {r["size"]} | {r["batch"]} | '
                 + ' | '.join(f'{r["median_ms"][m]:.2f}' for m in methods)
                 + f' | {r["median_ms"]["peak"]:.1f} |')
  lines += ['', 'time / ours (median of within-round ratios), ours\' FLOP/s (4 B S R^2):', '',
            '| S | B | ' + ' | '.join(peers) + ' | ours GFLOP/s | peak GFLOP/s | share of peak |',
            '|---|---|' + '---|' * (len(peers) + 3)]
  for r in rows:
    lines.append(f'| {r["size"]} | {r["batch"]} | '
                 + ' | '.join(f'{r["ratio_to_ours"][m]:.2f}' for m in peers)
                 + f' | {r["ours_gflops"]:.1f} | {r["peak_gflops"]:.1f} | '
                 f'{100 * r["ours_peak_share"]:.0f}% |')
  means = geometric_means(rows, peers)
  lines.append('| geo. mean | | ' + ' | '.join(f'{means[m]:.2f}' for m in peers) + ' | | | |')
  lines += ['', 'the floor: the two batched matmuls alone (Gram of [P/sqrt(d) | r/sqrt(d)] '
            'and its product with an (R+1)^2 matrix), same FLOP count:', '',
            '| S | B | dots ms | dots share of peak | ours / dots |', '|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["size"]} | {r["batch"]} | {r["median_ms"]["dots"]:.2f} | '
                 f'{100 * r["dots_peak_share"]:.0f}% | {r["ours_over_dots"]:.2f} |')
  lines += ['', 'accuracy against float64 (batch-sum log_prob relative; gradients max abs '
            'error / max abs value):', '',
            '| S | B | method | log_prob | grad loc | grad P |', '|---|---|---|---|---|---|']
  for r in rows:
    for m in methods:
      a = r['accuracy'][m]
      lines.append(f'| {r["size"]} | {r["batch"]} | {m} | {a["log_prob_rel"]:.1e} | '
                   f'{a["grad_loc_rel"]:.1e} | {a["grad_factor_rel"]:.1e} |')
  return '\n'.join(lines)


def geometric_means(rows: list[dict], peers: list[str]) -> dict[str, float]:
  return {m: math.exp(statistics.fmean(math.log(r['ratio_to_ours'][m]) for r in rows))
          for m in peers}


def goal_verdicts(rows: list[dict], methods: list[str]) -> list[str]:
  means = geometric_means(rows, [m for m in methods if m != 'ours'])
  lines = []
  for peer, goal in GOALS.items():
    if peer not in means:
      lines.append(f'goal {peer}/ours >= {goal}: not measured')
      continue
    lines.append(f'goal {peer}/ours >= {goal} (geometric mean): {means[peer]:.2f} -> '
                 f'{"met" if means[peer] >= goal else "NOT met"}')
  big = [r for r in rows if r['size'] == GOAL_PEAK_SIZE]
  for r in big:
    share = r['ours_peak_share']
    lines.append(f'goal >= {GOAL_PEAK_SHARE:.0%} of matmul peak at S={GOAL_PEAK_SIZE}: '
                 f'{share:.0%} -> {"met" if share >= GOAL_PEAK_SHARE else "NOT met"} '
                 f'(the two batched matmuls alone reach {r["dots_peak_share"]:.0%})')
  worst = max(max(r['accuracy']['ours'].values()) for r in rows)
  lp = max(r['accuracy']['ours']['log_prob_rel'] for r in rows)
  grads = max(max(r['accuracy']['ours']['grad_loc_rel'], r['accuracy']['ours']['grad_factor_rel'])
              for r in rows)
  lines.append(f'goal ours log_prob within 1e-6 and gradients within 1e-4 of float64: '
               f'{lp:.1e}, {grads:.1e} -> {"met" if lp <= 1e-6 and grads <= 1e-4 else "NOT met"}'
               f' (worst of all: {worst:.1e})')
  return lines


def environment() -> dict:
  device = jax.devices()[0]
  versions = {'jax': jax.__version__}
  for module in ('torch', 'numpyro', 'tensorflow_probability', 'distrax'):
    try:
      versions[module] = __import__(module).__version__
    except ImportError:
      versions[module] = None
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'cpu_count': os.cpu_count() or 0, 'host': platform.platform(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''), 'torch_threads': FLAGS.torch_threads,
          'load_average': os.getloadavg(), 'versions': versions}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.quick and FLAGS['repeats'].using_default_value:
    FLAGS.repeats = 5
  methods = []
  for method in FLAGS.methods:
    why = available(method)
    if why:
      print(f'skipping {method}: {why}')
    else:
      methods.append(method)
  if 'ours' not in methods:
    raise app.UsageError('--methods must include ours.')
  env = environment()
  print(f'device: {env["platform"]} / {env["device_kind"]}, {env["cpu_count"]} CPUs, '
        f'load average {env["load_average"][0]:.1f}; XLA_FLAGS={env["xla_flags"]!r}; '
        f'torch threads {FLAGS.torch_threads}; versions {env["versions"]}')
  shapes = [tuple(int(v) for v in s.split('x')) for s in FLAGS.shapes]
  print(f'float32, R={FLAGS.rank}, (S, B) in {shapes}, {FLAGS.repeats} rounds; reference check '
        f'(numpy Woodbury vs dense scipy, S=784): '
        f'{check_reference_dense(make_inputs(1, 784, FLAGS.rank, FLAGS.seed)):.1e}', flush=True)
  peak = peak_case(FLAGS.peak_size)
  rows = []
  for size, batch in shapes:
    rows.append(measure_shape(size, batch, methods, peak))
    print(f'  S={size} B={batch}: ' + ', '.join(
        f'{m} {rows[-1]["median_ms"][m]:.2f} ms' for m in methods), flush=True)
  print()
  print(format_tables(rows, methods))
  print()
  for line in goal_verdicts(rows, methods):
    print(line)
  out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                  f'likelihood_{env["platform"]}.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump({'date': datetime.datetime.now(datetime.timezone.utc).isoformat(),
               'environment': env, 'repeats': FLAGS.repeats, 'rows': rows}, f, indent=1)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
