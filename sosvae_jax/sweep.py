"""Sweeps: points from grids or sweep files, one ordinary run each, one table at the end."""

from __future__ import annotations

import ast
import builtins
import copy
import csv
import dataclasses
import fnmatch
import hashlib
import importlib.util
import inspect
import io
import itertools
import json
import math
import os
import re
import shlex
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
from flax import traverse_util
import ml_collections
from ml_collections.config_flags import config_path
from ml_collections.config_flags import tuple_parser
import numpy as np
from PIL import Image
from PIL import ImageDraw

from sosvae_jax import checkpoints
from sosvae_jax import config_checks
from sosvae_jax import metric_writers
from sosvae_jax import plotting
from sosvae_jax import train
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.evaluation import settings as eval_settings
from sosvae_jax.models import likelihoods

SEED_FIELD = 'seed'
LIKELIHOOD_NAME = 'likelihood.name'
# A point's override dict may hold LABEL: a short name for a point that sets
# many fields (a model of a study). The label stands in for those fields in
# the folder name and the tables; the seed and fields that differ between
# points of one label are still named: 'label=categorical+seed=0'.
LABEL = 'label'
# The one rule of grouping. Fields whose values a train step can take as
# traced arrays: points that differ only in these have the same shapes and
# control flow, so one compiled program can train them side by side (a
# leading model axis). A swept field not listed here (rank, latent size,
# likelihood, architecture, batch size, num_steps, logging cadence ...)
# splits the points into groups that run one after another.
SHARED_PROGRAM_FIELDS = (
    'seed', 'optimizer.learning_rate', 'optimizer.variance_lr_scale', 'kl_weight',
    'multiplier_learning_rate', 'pretrain_steps', 'likelihood.sigma',
    'constraints.*.target', 'constraints.*.damping', 'constraints.*.multiplier_lr',
    'constraints.*.initial_multiplier')

MANIFEST = 'sweep.json'
TABLE_CSV = 'sweep.csv'
TABLE_MD = 'sweep.md'
PLOT_PNG = 'sweep.png'
POINT_STATUS = 'sweep_point.json'  # in each point's workdir: the sweep's last word on it
EVAL_RESULTS = os.path.join('eval', 'results.json')  # written by evaluation/evaluate.py

FINISHED, FAILED, NONFINITE = 'finished', 'failed', 'non-finite'
UNFINISHED, NOT_STARTED = 'unfinished', 'not started'
STATUSES = (FINISHED, FAILED, NONFINITE, UNFINISHED, NOT_STARTED)
# Shown in sweep.md and plotted when --metrics is not given (those present).
DEFAULT_METRICS = ('elbo', 'kl', 'mse', 'entropy', 'iwae', 'fid_classifier_samples')
MAX_NAME_LENGTH = 150


class SweepError(ValueError):
  """A sweep that cannot run; the message names the point and field."""


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep.

  Attributes:
    index: position in the sweep (the manifest's key, `--index`).
    overrides: {dotted config field: value}, in sweep order.
    name: the run's folder name under the sweep's workdir.
    workdir: absolute path of the run's folder.
    config: the base config with the overrides applied (locked).
    label: the point's LABEL, or None.
  """

  index: int
  overrides: Mapping[str, Any]
  name: str
  workdir: str
  config: ml_collections.ConfigDict
  label: str | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What running one point gave: a status of STATUSES, why, and how long."""

  status: str
  message: str = ''
  seconds: float = 0.0


# An engine trains a list of points that share one shape group and returns one
# Outcome per point, in order; it writes every point's workdir as a single run
# does. run_sequential is one; a vmapped engine registers itself in ENGINES.
RunGroup = Callable[[Sequence[Point]], list[Outcome]]


# ----------------------------------------------------------------------------
# Sweep definitions: lists of override dicts.
# ----------------------------------------------------------------------------
def axis(field: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """[{field: v} for v in values]: one swept field."""
  return [{field: v} for v in values]


def product(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Every combination of the axes' override dicts (the first axis outermost)."""
  return [{k: v for part in combo for k, v in part.items()}
          for combo in itertools.product(*axes)]


def zip(*axes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:  # pylint: disable=redefined-builtin
  """Axes of equal length merged point by point."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise SweepError(f'zip needs axes of equal length; got lengths {[len(a) for a in axes]}.')
  return [{k: v for part in parts for k, v in part.items()}
          for parts in builtins.zip(*axes)]


def split_top_level(text: str) -> list[str]:
  """'1,(2, 3),x' -> ['1', '(2, 3)', 'x']: commas inside brackets are kept."""
  parts, depth, current = [], 0, ''
  for char in text:
    depth += (char in '([{') - (char in ')]}')
    if char == ',' and depth == 0:
      parts.append(current.strip())
      current = ''
    else:
      current += char
  parts.append(current.strip())
  return parts


def parse_grid_flag(text: str) -> tuple[str, list[str]]:
  """'kl_weight=0.01,0.1' -> ('kl_weight', ['0.01', '0.1'])."""
  field, sep, values = text.partition('=')
  field = field.strip().removeprefix('config.')
  parts = split_top_level(values)
  if not sep or not field or any(not p for p in parts):
    raise SweepError(f'--grid={text!r}: expected FIELD=VALUE,VALUE,... '
                     '(e.g. --grid=kl_weight=0.01,0.1).')
  return field, parts


def field_type(config: ml_collections.ConfigDict, field: str) -> type:
  """The type of config field `field`; SweepError if there is no such field."""
  try:
    return config_path.get_type(field, config)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], Exception):  # ml_collections nests a KeyError
      e = e.args[0]
    why = str(e.args[0] if e.args else e).replace('\n', ' ')
    raise SweepError(f'config.{field} does not exist ({why}).') from None


def parse_value(config: ml_collections.ConfigDict, field: str, text: str) -> Any:
  """A command-line value parsed to the type of config.field, as `--config.` does."""
  kind = field_type(config, field)
  try:
    if kind is bool:
      lowered = text.lower()
      if lowered not in ('true', 'false', '1', '0'):
        raise ValueError('expected true or false')
      return lowered in ('true', '1')
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind is str:
      return text
    if kind is tuple:
      return tuple_parser.TupleParser().parse(text)
    try:  # None-valued fields: any literal, else a string (as config_flags).
      return ast.literal_eval(text)
    except (SyntaxError, ValueError):
      return text
  except ValueError as e:
    raise SweepError(f'config.{field}={text!r} is not a valid {kind.__name__} ({e}).') from None


def grid_points(config: ml_collections.ConfigDict, grids: Sequence[str]) -> list[dict[str, Any]]:
  """The product of `--grid` flags, values typed like the base config's fields."""
  axes = []
  for text in grids:
    field, values = parse_grid_flag(text)
    axes.append(axis(field, [parse_value(config, field, v) for v in values]))
  return product(*axes)


# A sweep file may define report(root, rows) -> markdown: what its study
# concludes from the collected rows (collect_rows), added to sweep.md.
Report = Callable[[str, Sequence[Mapping[str, Any]]], str]


def _sweep_module(spec: str):
  path = spec.partition(':')[0]
  if not os.path.isfile(path):
    raise SweepError(f'--sweep={spec!r}: no file {path!r}.')
  module_spec = importlib.util.spec_from_file_location('sweep_definition', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    _raise_sweep_file_error(spec, e)
  return module


def _raise_sweep_file_error(spec: str, error: Exception) -> None:
  """A SweepError naming the line where the user's sweep file failed; an
  error that never passed through the file (a bug) is raised unchanged."""
  where = config_checks.failure_in_file(error, spec.partition(':')[0])
  if where is None:
    raise error
  raise SweepError(f'--sweep={spec!r}: the sweep file fails at {where}; fix the file.') from None


def load_report(spec: str) -> Report | None:
  """The sweep file's report(root, rows), or None if it has none."""
  return getattr(_sweep_module(spec), 'report', None)


def load_sweep_file(spec: str) -> list[dict[str, Any]]:
  """get_sweep() of a sweep file, 'path.py' or 'path.py:arg' (then get_sweep(arg))."""
  path, _, arg = spec.partition(':')
  module = _sweep_module(spec)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'--sweep={spec!r}: {path} defines no get_sweep().')
  parameters = inspect.signature(module.get_sweep).parameters.values()
  if arg and not parameters:
    raise SweepError(f'--sweep={spec!r}: get_sweep() of {path} takes no argument, but '
                     f'{arg!r} was given after the colon; drop ":{arg}".')
  if not arg and any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                     for p in parameters):
    raise SweepError(f'--sweep={spec!r}: get_sweep() of {path} needs an argument; pass '
                     f'it after a colon: --sweep={path}:ARG.')
  try:
    points = module.get_sweep(arg) if arg else module.get_sweep()
  except Exception as e:  # pylint: disable=broad-except
    _raise_sweep_file_error(spec, e)
  if not isinstance(points, (list, tuple)) or not all(isinstance(p, Mapping) for p in points):
    raise SweepError(f'--sweep={spec!r}: get_sweep() must return a list of override dicts.')
  if not points:
    raise SweepError(f'--sweep={spec!r}: get_sweep() returned no points, so there would be '
                     'nothing to run; return at least one override dict ({} = the base '
                     'config).')
  return [dict(p) for p in points]


# ----------------------------------------------------------------------------
# Points: configs, names, workdirs, checks.
# ----------------------------------------------------------------------------
def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the overrides set; SweepError names a bad field.

  `likelihood.name` is applied first and switches the whole section
  (likelihoods.likelihood_section): the fields both heads share keep their
  values, the new head's others start at its defaults and can be set by the
  point's other `likelihood.` overrides.
  """
  config = copy.deepcopy(config)
  name = overrides.get(LIKELIHOOD_NAME)
  if name is not None:
    if name not in likelihoods.LIKELIHOODS:
      raise SweepError(f'config.{LIKELIHOOD_NAME}={name!r} is not a known likelihood; '
                       f'choose one of {sorted(likelihoods.LIKELIHOODS)}.')
    # The point's own likelihood fields join the section: a loop field (the
    # plateau switch) that the base config lacks is then a known field.
    prefix = LIKELIHOOD_NAME.rpartition('.')[0] + '.'
    values = {**config.likelihood, **{k[len(prefix):]: v for k, v in overrides.items()
                                      if k.startswith(prefix)}}
    config.likelihood = ml_collections.ConfigDict(likelihoods.likelihood_section(
        name, values, config.data.image_shape[-1]))
  for field, value in overrides.items():
    field_type(config, field)
    try:
      config_path.set_value(field, config, value)
    except (TypeError, ValueError) as e:
      raise SweepError(f'config.{field}={value!r}: {e}') from None
  return config


def format_value(value: Any) -> str:
  """A value as `--config.field=` parses it back (floats exactly)."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (list, tuple)):
    return '(' + ', '.join(format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return repr(value) if isinstance(value, float) else str(value)


def _name_part(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return '_'.join(_name_part(v) for v in value)
  return re.sub(r'[^A-Za-z0-9.+-]', '_', format_value(value))


def point_name(overrides: Mapping[str, Any]) -> str:
  """Deterministic folder name: 'kl_weight=0.01+seed=1' ('base' when empty).

  Characters outside [A-Za-z0-9.+-] in values become '_'; names longer than
  MAX_NAME_LENGTH are cut and end with a hash of the full name. No comma:
  point folders go into comma-separated list flags (experiments.report
  --workdirs).
  """
  name = '+'.join(f'{k}={_name_part(v)}' for k, v in overrides.items()) or 'base'
  if len(name) > MAX_NAME_LENGTH:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:MAX_NAME_LENGTH - 11]}~{digest}'
  return name


def make_points(base: ml_collections.ConfigDict, overrides: Sequence[Mapping[str, Any]],
                root: str) -> list[Point]:
  """Points under `root`; SweepError names each bad point (index and overrides)."""
  root = os.path.abspath(root)
  labels = [o.get(LABEL) for o in overrides]
  overrides = [{k: v for k, v in o.items() if k != LABEL} for o in overrides]
  if any(labels) and not all(isinstance(l, str) and l for l in labels):
    raise SweepError(f'Some points have a {LABEL!r} and others not (or an empty one): '
                     f'give every point a non-empty {LABEL} string, or none.')
  named = _fields_within_labels(labels, overrides)
  points, problems, names = [], [], {}
  for index, (label, point_overrides) in enumerate(builtins.zip(labels, overrides)):
    try:
      config = apply_overrides(base, point_overrides)
    except SweepError as e:
      problems.append(f'point {index} {point_overrides}: {e}')
      continue
    name = point_name(point_overrides if label is None else {
        LABEL: label, **{k: point_overrides.get(k) for k in named}})
    if name in names:
      problems.append(f'point {index} {point_overrides}: same folder name {name!r} as '
                      f'point {names[name]}; every point needs different values.')
    names.setdefault(name, index)
    points.append(Point(index, point_overrides, name, os.path.join(root, name), config,
                        label))
  if problems:
    raise SweepError('The sweep has bad points:\n' + '\n'.join(f'  - {p}' for p in problems))
  return points


def _fields_within_labels(labels: Sequence[str | None],
                          overrides: Sequence[Mapping[str, Any]]) -> list[str]:
  """The seed and the overridden fields whose values differ between points of
  one label, in order of first appearance; [] without labels. The seed is
  always named, so that a point keeps its folder when seeds are added."""
  by_label: dict[str, list[Mapping[str, Any]]] = {}
  for label, o in builtins.zip(labels, overrides):
    if label is not None:
      by_label.setdefault(label, []).append(o)
  fields = dict.fromkeys(k for o in overrides for k in o)
  return [f for f in fields if f == SEED_FIELD or any(
      len({json.dumps(_plain(o.get(f)), default=str) for o in members}) > 1
      for members in by_label.values())]


def check_points(points: Sequence[Point], num_devices: int | None = None) -> None:
  """config_checks.check_config on every point; one SweepError naming each bad one."""
  problems = []
  for p in points:
    try:
      config_checks.check_config(p.config, num_devices=num_devices)
      eval_settings.check_section(p.config)  # every point is evaluable later
      checkpoints.check_workdir(p.config, p.workdir)
    except config_checks.ConfigError as e:
      problems.append(f'point {p.index} ({p.name}) {dict(p.overrides)}: {e}')
  if problems:
    raise SweepError(f'{len(problems)} of {len(points)} points fail the config checks:\n'
                     + '\n'.join(problems))


def overridden_fields(points: Sequence[Point]) -> list[str]:
  """Every overridden field, in order of first appearance."""
  return list(dict.fromkeys(k for p in points for k in p.overrides))


def swept_fields(points: Sequence[Point]) -> list[str]:
  """The columns of the tables: every overridden field, or for labelled
  points LABEL and the fields that differ between points of one label."""
  if not any(p.label for p in points):
    return overridden_fields(points)
  return [LABEL, *_fields_within_labels([p.label for p in points],
                                        [p.overrides for p in points])]


def point_values(point: Point, fields: Sequence[str]) -> dict[str, Any]:
  """The point's value of each field (the base config's where not overridden;
  None where its config has no such field, e.g. another likelihood's)."""
  values = {}
  for f in fields:
    if f == LABEL:
      values[f] = point.label
      continue
    try:
      values[f] = _plain(config_path.get_value(f, point.config))
    except KeyError:
      values[f] = None
  return values


def _plain(value: Any) -> Any:
  """JSON-ready copy of a config value (tuples as lists)."""
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value


# ----------------------------------------------------------------------------
# Shape groups.
# ----------------------------------------------------------------------------
def shares_program(field: str) -> bool:
  """Whether points differing in `field` can share one compiled train step."""
  return any(fnmatch.fnmatchcase(field, pattern) for pattern in SHARED_PROGRAM_FIELDS)


@dataclasses.dataclass(frozen=True)
class Group:
  """Points that share shapes and control flow.

  Attributes:
    index: the group's position.
    points: indices of its points.
    fixed: {field: value} of the swept fields that split groups.
    varying: swept fields whose values differ inside the group.
  """

  index: int
  points: tuple[int, ...]
  fixed: Mapping[str, Any]
  varying: tuple[str, ...]


def group_points(points: Sequence[Point]) -> list[Group]:
  """Points split by the values of overridden fields outside SHARED_PROGRAM_FIELDS."""
  fields = overridden_fields(points)
  splitting = [f for f in fields if not shares_program(f)]
  keyed: dict[str, list[Point]] = {}
  for p in points:
    keyed.setdefault(json.dumps(point_values(p, splitting)), []).append(p)
  groups = []
  for i, members in enumerate(keyed.values()):
    values = [point_values(p, fields) for p in members]
    varying = tuple(f for f in fields if len({json.dumps(v[f]) for v in values}) > 1)
    groups.append(Group(i, tuple(p.index for p in members),
                        point_values(members[0], splitting), varying))
  return groups


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'a.b': plain value} of a nested config dict."""
  return {k: _plain(v) for k, v in traverse_util.flatten_dict(dict(tree), sep='.').items()}


def varying_values(points: Sequence[Point]) -> dict[str, list[Any]]:
  """{dotted field: [value of each point]} of every config field that differs.

  For an engine that stacks a group's points: within a group (group_points)
  every key is a SHARED_PROGRAM_FIELDS field.
  """
  flat = [_flatten(p.config.to_dict()) for p in points]
  fields = dict.fromkeys(k for f in flat for k in f)
  return {k: [f.get(k) for f in flat] for k in fields
          if len({json.dumps(f.get(k)) for f in flat}) > 1}


def describe_groups(groups: Sequence[Group]) -> str:
  """One line per group: its points, what is fixed, what varies."""
  lines = [f'{len(groups)} shape group(s):']
  for g in groups:
    fixed = ', '.join(f'{k}={format_value(v)}' for k, v in g.fixed.items()) or 'base'
    varying = ', '.join(g.varying) or 'nothing'
    lines.append(f'  group {g.index}: {len(g.points)} point(s) {list(g.points)}; '
                 f'fixed {fixed}; varying {varying}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------
# Manifest and commands.
# ----------------------------------------------------------------------------
def manifest(config_arg: str, base_overrides: Mapping[str, Any],
             points: Sequence[Point], groups: Sequence[Group],
             sweep_file: str | None = None) -> dict[str, Any]:
  """The content of WORKDIR/sweep.json: index -> overrides, folder, group.

  `sweep_file`: the sweep file's spec with an absolute path, so that
  `collect` finds its report from any directory.
  """
  group_of = {i: g.index for g in groups for i in g.points}
  fields = swept_fields(points)
  return {
      'config': config_arg,
      'sweep_file': sweep_file,
      'base_overrides': {k: _plain(v) for k, v in base_overrides.items()},
      'swept_fields': fields,
      'shared_program_fields': list(SHARED_PROGRAM_FIELDS),
      'points': [{'index': p.index, 'name': p.name, 'label': p.label,
                  'overrides': {k: _plain(v) for k, v in p.overrides.items()},
                  'values': point_values(p, fields), 'group': group_of[p.index]}
                 for p in points],
      'groups': [{'index': g.index, 'points': list(g.points),
                  'fixed': dict(g.fixed), 'varying': list(g.varying)} for g in groups],
  }


def _json_ready(value: Any) -> Any:
  """NaN and inf as None: sweep.json stays valid JSON for any reader."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, Mapping):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  return value


def _load_manifest(path: str) -> dict[str, Any]:
  """sweep.json, or SweepError when it is torn or hand-edited into no manifest."""
  try:
    with open(path) as f:
      content = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    content, why = None, f'not valid JSON ({e})'
  else:
    why = f'holds {type(content).__name__}, not a manifest'
  if not isinstance(content, dict):
    raise SweepError(f'{path} is damaged ({why}): rerun the sweep\'s command (e.g. with '
                     '--mode=print) to write it again; finished points are kept.')
  return content


def read_manifest(root: str) -> dict[str, Any]:
  path = os.path.join(root, MANIFEST)
  if not os.path.isfile(path):
    raise SweepError(f'{path} does not exist: run the sweep (any --mode) first.')
  return _load_manifest(path)


def write_manifest(root: str, content: Mapping[str, Any]) -> str:
  """Writes WORKDIR/sweep.json unless it already holds this sweep (then kept,
  with any collected table in it); a damaged one is written again."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, MANIFEST)
  if os.path.isfile(path):
    try:
      old = _load_manifest(path)
    except SweepError:
      logging.warning('%s was damaged; writing it again.', path)
    else:
      if all(old.get(k) == v for k, v in json.loads(json.dumps(content)).items()):
        return path
      logging.warning('%s described another sweep; rewriting it (finished points '
                      'with the same names are reused).', path)
  workdir_lib.write_atomic(path, json.dumps(content, indent=2) + '\n')
  return path


def command(config_arg: str, base_overrides: Mapping[str, Any], point: Point, *,
            evaluate: bool = False) -> str:
  """The shell command that trains `point` alone (experiments/main.py)."""
  args = ['python', '-m', 'experiments.main', f'--config={config_arg}',
          f'--workdir={point.workdir}']
  for overrides in (base_overrides, point.overrides):
    args += [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]
  line = ' '.join(shlex.quote(a) for a in args)
  if evaluate:
    line += (' && python -m experiments.main --mode=evaluate '
             f'--workdir={shlex.quote(point.workdir)}')
  return line


# ----------------------------------------------------------------------------
# Running.
# ----------------------------------------------------------------------------
def is_trained(workdir: str, num_steps: int) -> bool:
  """A checkpoint at num_steps (or later) exists: nothing left to train."""
  steps = checkpoints.checkpoint_steps(workdir)
  return bool(steps) and steps[-1] >= num_steps


def read_json(path: str) -> dict[str, Any] | None:
  """A JSON file's content, or None where it is absent or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_point_status(point: Point, outcome: Outcome, stage: str) -> None:
  os.makedirs(point.workdir, exist_ok=True)
  workdir_lib.write_atomic(os.path.join(point.workdir, POINT_STATUS), json.dumps(
      {'index': point.index, 'overrides': {k: _plain(v) for k, v in point.overrides.items()},
       'stage': stage, **dataclasses.asdict(outcome)}, indent=2) + '\n')


def error_message(e: BaseException) -> str:
  """The last line of an exception's report (cut at 2000 characters)."""
  last = traceback.format_exception_only(type(e), e)[-1].strip()
  return last if len(last) < 2000 else last[:2000] + '...'


def train_point(point: Point) -> Outcome:
  """train.train_and_evaluate on one point; an error becomes a failed Outcome."""
  t0 = time.time()
  try:
    train.train_and_evaluate(point.config, point.workdir)
  except train.NonFiniteError as e:
    return Outcome(NONFINITE, error_message(e), time.time() - t0)
  except Exception as e:  # pylint: disable=broad-except
    logging.exception('Point %d (%s) failed.', point.index, point.name)
    return Outcome(FAILED, error_message(e), time.time() - t0)
  seconds = time.time() - t0
  if not is_trained(point.workdir, point.config.num_steps):
    # train_and_evaluate returns early only when stopped by a signal.
    return Outcome(UNFINISHED, 'stopped before num_steps (signal)', seconds)
  return Outcome(FINISHED, '', seconds)


def run_sequential(points: Sequence[Point]) -> list[Outcome]:
  """One point after another in this process; stops after a pre-empted point."""
  outcomes = []
  for p in points:
    logging.info('Sweep point %d (%s): training in %s', p.index, p.name, p.workdir)
    outcomes.append(train_point(p))
    if outcomes[-1].status == UNFINISHED:
      break
  return outcomes + [Outcome(NOT_STARTED, 'sweep stopped')] * (len(points) - len(outcomes))


ENGINES: dict[str, RunGroup] = {'sequential': run_sequential}


def evaluate_point(point: Point, samplers: Sequence[str] | None = None) -> Outcome:
  """The evaluation command on a trained point, with its config.evaluation
  settings, for each of `samplers` (None: the settings' own); skipped if
  each sampler's results are of the latest checkpoint already."""
  # Imported here: the evaluation stack is heavy and only this needs it.
  from sosvae_jax.evaluation import evaluate, results, settings  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  steps = checkpoints.checkpoint_steps(point.workdir)
  done = [read_json(results.eval_file(point.workdir, 'results.json', s))
          for s in samplers or (None,)]
  if steps and all(d is not None and d.get('step') == steps[-1] for d in done):
    return Outcome(FINISHED, 'evaluation already written')
  try:
    evaluate.evaluate_and_write(point.workdir,
                                settings.from_config(point.config.get('evaluation')),
                                samplers)
  except Exception as e:  # pylint: disable=broad-except
    logging.exception('Evaluation of point %d (%s) failed.', point.index, point.name)
    return Outcome(FAILED, 'evaluation: ' + error_message(e), time.time() - t0)
  return Outcome(FINISHED, '', time.time() - t0)


def run_sweep(points: Sequence[Point], run_group: RunGroup, *,
              evaluate: bool = False,
              samplers: Sequence[str] | None = None) -> dict[int, Outcome]:
  """Trains every unfinished point, group by group; {index: Outcome} of all.

  Points already trained to their num_steps are skipped (FINISHED, message
  'already trained'); with `evaluate`, each group's trained points are then
  evaluated (evaluation/evaluate.py) before the next group trains, so that a
  long sweep stopped half-way keeps the results of what it finished, with
  each of `samplers` (None: its config's), unless its results are of that
  step already.
  """
  outcomes: dict[int, Outcome] = {}
  by_index = {p.index: p for p in points}
  for group in group_points(points):
    members = [by_index[i] for i in group.points]
    todo = [p for p in members if not is_trained(p.workdir, p.config.num_steps)]
    for p in members:
      if p not in todo:
        outcomes[p.index] = Outcome(FINISHED, 'already trained')
    if todo:
      logging.info('Group %d: training %d point(s) %s', group.index, len(todo),
                   [p.index for p in todo])
      results = run_group(todo)
      if len(results) != len(todo):
        raise RuntimeError(f'The engine returned {len(results)} outcomes for {len(todo)} points.')
      for p, outcome in builtins.zip(todo, results):
        outcomes[p.index] = outcome
        if outcome.status != NOT_STARTED:
          write_point_status(p, outcome, 'train')
      if any(o.status in (UNFINISHED, NOT_STARTED) for o in results):
        break  # pre-empted: the same command resumes
    for p in members:
      if evaluate and outcomes[p.index].status == FINISHED:
        evaluated = evaluate_point(p, samplers)
        if evaluated.status != FINISHED:
          outcomes[p.index] = evaluated
          write_point_status(p, evaluated, 'evaluate')
  for p in points:
    outcomes.setdefault(p.index, Outcome(NOT_STARTED, 'sweep stopped'))
  return outcomes


# ----------------------------------------------------------------------------
# Collect: one row per point, grouped over seeds, plots.
# ----------------------------------------------------------------------------
def _number(value: Any) -> float | None:
  """A metric as float (metric_writers stores non-finite as 'nan'/'inf'), or None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    try:
      return float(value)
    except ValueError:
      return None
  return None


def final_metrics(workdir: str) -> tuple[dict[str, float], int | None, str]:
  """(metrics, step, source) of a run's final evaluation.

  The last eval record of metrics.jsonl, updated with eval/results.json's
  metrics when the evaluation command ran on the same step or later.
  """
  metrics, step, source = {}, None, ''
  if os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    records = metric_writers.read_metrics(workdir, split='eval')
    if records:
      last = max(records, key=lambda r: r['step'])
      step, source = last['step'], 'metrics.jsonl'
      metrics = {k: _number(v) for k, v in last.items() if k not in ('step', 'split')}
  results = read_json(os.path.join(workdir, EVAL_RESULTS))
  if results is not None and (step is None or results.get('step', -1) >= step):
    metrics.update({k: _number(v) for k, v in results.get('metrics', {}).items()})
    step, source = results.get('step', step), EVAL_RESULTS
  return {k: v for k, v in metrics.items() if v is not None}, step, source


def point_status(workdir: str, num_steps: int | None,
                 metrics: Mapping[str, float]) -> tuple[str, str]:
  """(status, message) of a point from what its workdir holds."""
  record = read_json(os.path.join(workdir, POINT_STATUS)) or {}
  message = record.get('message', '')
  if num_steps is not None and is_trained(workdir, num_steps):
    if record.get('stage') == 'evaluate' and record.get('status') == FAILED:
      return FAILED, message
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
      return NONFINITE, f'non-finite final metrics: {", ".join(bad)}'
    return FINISHED, ''
  if record.get('status') in (FAILED, NONFINITE):
    return record['status'], message
  if (checkpoints.checkpoint_steps(workdir)
      or os.path.isfile(os.path.join(workdir, 'metrics.jsonl'))):
    return UNFINISHED, message or 'started, not trained to num_steps'
  return NOT_STARTED, ''


def collect_rows(root: str) -> list[dict[str, Any]]:
  """One row per manifest point: index, name, swept values, status, metrics."""
  content = read_manifest(root)
  rows = []
  for p in content['points']:
    workdir = os.path.join(root, p['name'])
    # The latest launch's config: a relaunch with more steps counts.
    config = (workdir_lib.effective_config(workdir)
              if os.path.isfile(os.path.join(workdir, workdir_lib.CONFIG_FILE)) else {})
    metrics, step, source = final_metrics(workdir)
    status, message = point_status(workdir, config.get('num_steps'), metrics)
    rows.append({'index': p['index'], 'name': p['name'], **p['values'],
                 'status': status, 'step': step, 'metrics_source': source,
                 'metrics': metrics, 'message': message})
  return rows


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """(mean, sample std with ddof=1 (nan for one value), count) of finite values."""
  x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if not len(x):
    return math.nan, math.nan, 0
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, len(x)


def grouped_rows(rows: Sequence[Mapping[str, Any]], fields: Sequence[str],
                 metrics: Sequence[str]) -> list[dict[str, Any]]:
  """Rows grouped by every swept field but the seed; mean/std of finished points."""
  keys = [f for f in fields if f != SEED_FIELD]
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for r in rows:
    groups.setdefault(json.dumps([r[k] for k in keys]), []).append(r)
  out = []
  for members in groups.values():
    done = [r for r in members if r['status'] == FINISHED]
    row = {k: members[0][k] for k in keys}
    row.update(points=len(members), finished=len(done))
    for m in metrics:
      mean, std, n = mean_std([r['metrics'].get(m) for r in done])
      row[m] = {'mean': mean, 'std': std, 'n': n}
    out.append(row)
  return out


def choose_metrics(rows: Sequence[Mapping[str, Any]],
                   wanted: Sequence[str] | None = None) -> list[str]:
  """`wanted`, or the DEFAULT_METRICS that some row has."""
  if wanted:
    return list(wanted)
  present = {k for r in rows for k in r['metrics']}
  return [m for m in DEFAULT_METRICS if m in present]


def _cell(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    return '-' if math.isnan(value) else f'{value:.6g}'
  if isinstance(value, (list, tuple)):
    return format_value(tuple(value))
  return str(value).replace('|', '\\|').replace('\n', ' ')


def csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
  """sweep.csv: swept values, status and every final metric of every point."""
  names = sorted({k for r in rows for k in r['metrics']})
  header = ['index', 'name', *fields, 'status', 'step', 'metrics_source', *names, 'message']
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(header)
  for r in rows:
    writer.writerow([r['index'], r['name'], *[json.dumps(r[f]) if isinstance(r[f], list)
                                              else r[f] for f in fields],
                     r['status'], r['step'], r['metrics_source'],
                     *[r['metrics'].get(n, '') for n in names], r['message']])
  return buffer.getvalue()


def markdown(rows: Sequence[Mapping[str, Any]], grouped: Sequence[Mapping[str, Any]],
             fields: Sequence[str], metrics: Sequence[str], title: str) -> str:
  """sweep.md: the per-point table, the table over seeds, the plot."""
  counts = {s: sum(r['status'] == s for r in rows) for s in STATUSES}
  lines = [f'# {title}', '', ', '.join(f'{n} {s}' for s, n in counts.items() if n) + '.', '',
           '| ' + ' | '.join(['#', *fields, 'status', 'step', *metrics, 'message']) + ' |',
           '|' + '---|' * (len(fields) + len(metrics) + 4)]
  for r in rows:
    cells = [r['index'], *[r[f] for f in fields], r['status'], r['step'],
             *[r['metrics'].get(m) for m in metrics], r['message'][:200]]
    lines.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
  keys = [f for f in fields if f != SEED_FIELD]
  lines += ['', f'Mean +/- std (ddof=1) over {SEED_FIELD} of the finished points '
            '(n: how many):', '',
            '| ' + ' | '.join([*keys, 'finished / points', *metrics]) + ' |',
            '|' + '---|' * (len(keys) + len(metrics) + 1)]
  for g in grouped:
    stats = [f'{_cell(g[m]["mean"])} +/- {_cell(g[m]["std"])} (n={g[m]["n"]})'
             for m in metrics]
    lines.append('| ' + ' | '.join([*[_cell(g[k]) for k in keys],
                                    f'{g["finished"]} / {g["points"]}', *stats]) + ' |')
  lines += ['', f'![metrics against swept values]({PLOT_PNG})']
  return '\n'.join(lines) + '\n'


PANEL_WIDTH, PANEL_HEIGHT = 360, 240
_MARGIN = dict(left=64, right=12, top=30, bottom=38)
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189),
            (255, 127, 14), (140, 86, 75), (227, 119, 194), (127, 127, 127))


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _x_positions(values: Sequence[Any]) -> tuple[dict[str, float], str]:
  """{json(value): position} and the scale: 'log', 'linear' or 'categorical'."""
  unique = list({json.dumps(v): v for v in values}.items())
  if unique and all(_is_number(v) for _, v in unique):
    numbers = [float(v) for _, v in unique]
    if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
      return {k: math.log10(float(v)) for k, v in unique}, 'log'
    return {k: float(v) for k, v in unique}, 'linear'
  return {k: float(i) for i, (k, _) in enumerate(unique)}, 'categorical'


def _panel(rows: Sequence[Mapping[str, Any]], field: str, metric: str,
           series_fields: Sequence[str]) -> Image.Image:
  """metric against field: one line per combination of series_fields, mean
  +/- std over the rest (the seeds), dots for the single points."""
  image = Image.new('RGB', (PANEL_WIDTH, PANEL_HEIGHT), 'white')
  draw = ImageDraw.Draw(image)
  left, top = _MARGIN['left'], _MARGIN['top']
  right, bottom = PANEL_WIDTH - _MARGIN['right'], PANEL_HEIGHT - _MARGIN['bottom']
  positions, scale = _x_positions([r[field] for r in rows])
  draw.text((left, 6), f'{metric} vs {field}' + (' (log x)' if scale == 'log' else ''),
            fill='black')
  draw.rectangle((left, top, right, bottom), outline='black')
  done = [r for r in rows if r['status'] == FINISHED
          and math.isfinite(r['metrics'].get(metric, math.nan))]
  if not done:
    draw.text((left + 10, (top + bottom) // 2), 'no finished point has it', fill='black')
    return image
  series: dict[str, dict[str, list[float]]] = {}
  for r in done:
    label = ', '.join(f'{f}={_cell(r[f])}' for f in series_fields)
    series.setdefault(label, {}).setdefault(json.dumps(r[field]), []).append(
        r['metrics'][metric])
  stats = {label: {k: mean_std(v) for k, v in xs.items()} for label, xs in series.items()}
  ys = [v for r in done for v in [r['metrics'][metric]]]
  ys += [m + s * sign for xs in stats.values() for m, s, n in xs.values() if n > 1
         for sign in (-1, 1)]
  y0, y1 = min(ys), max(ys)
  pad = 0.06 * (y1 - y0) if y1 > y0 else max(abs(y0) * 0.05, 1e-3)
  y0, y1 = y0 - pad, y1 + pad
  x0, x1 = min(positions.values()), max(positions.values())

  def px(key: str) -> float:
    if x1 == x0:
      return (left + right) / 2
    return left + 12 + (positions[key] - x0) / (x1 - x0) * (right - left - 24)

  def py(y: float) -> float:
    return bottom - (y - y0) / (y1 - y0) * (bottom - top)

  for i in range(5):
    y = y0 + (y1 - y0) * (i + 0.5) / 5
    draw.line((left - 4, py(y), left, py(y)), fill='black')
    draw.text((2, py(y) - 5), f'{y:.4g}', fill='black')
  shown = sorted(positions, key=positions.get)
  step = max(1, math.ceil(len(shown) / 6))
  for key in shown[::step]:
    draw.line((px(key), bottom, px(key), bottom + 4), fill='black')
    draw.text((px(key) - 14, bottom + 8), _cell(json.loads(key))[:9], fill='black')
  for n_series, (label, xs) in enumerate(sorted(stats.items())):
    colour = _COLOURS[n_series % len(_COLOURS)]
    keys = sorted(xs, key=positions.get)
    draw.line([(px(k), py(xs[k][0])) for k in keys], fill=colour, width=2)
    for k in keys:
      mean, std, n = xs[k]
      if n > 1:
        draw.line((px(k), py(mean - std), px(k), py(mean + std)), fill=colour, width=1)
      for y in series[label][k]:
        draw.ellipse((px(k) - 2, py(y) - 2, px(k) + 2, py(y) + 2), fill=colour)
    if label and n_series < 6:
      draw.text((left + 6, top + 4 + 11 * n_series), label[:50], fill=colour)
  return image


def plot(rows: Sequence[Mapping[str, Any]], fields: Sequence[str],
         metrics: Sequence[str]) -> np.ndarray:
  """uint8 [len(metrics) * PANEL_HEIGHT, len(x fields) * PANEL_WIDTH, 3]: one
  panel per metric (row) and swept field other than the seed (column)."""
  x_fields = [f for f in fields if f != SEED_FIELD] or list(fields[:1])
  canvas = Image.new('RGB', (max(1, len(x_fields)) * PANEL_WIDTH,
                             max(1, len(metrics)) * PANEL_HEIGHT), 'white')
  for i, metric in enumerate(metrics):
    for j, field in enumerate(x_fields):
      others = [f for f in x_fields if f != field]
      canvas.paste(_panel(rows, field, metric, others), (j * PANEL_WIDTH, i * PANEL_HEIGHT))
  return np.asarray(canvas)


def collect(root: str, metrics: Sequence[str] | None = None) -> dict[str, Any]:
  """Writes sweep.csv, sweep.md, sweep.png and the rows into sweep.json.

  Every manifest point has a row, whatever its status. sweep.md ends with the
  sweep file's report (load_report) when it has one. Returns {'rows',
  'grouped', 'metrics', 'paths', 'markdown'}.
  """
  root = os.path.abspath(root)
  content = read_manifest(root)
  fields = content['swept_fields']
  rows = collect_rows(root)
  chosen = choose_metrics(rows, metrics)
  grouped = grouped_rows(rows, fields, chosen)
  paths = {k: os.path.join(root, name) for k, name in (
      ('csv', TABLE_CSV), ('markdown', TABLE_MD), ('png', PLOT_PNG), ('json', MANIFEST))}
  text = markdown(rows, grouped, fields, chosen, f'Sweep {root} ({content["config"]})')
  if content.get('sweep_file'):
    text += '\n' + sweep_report(content['sweep_file'], root, rows)
  workdir_lib.write_atomic(paths['csv'], csv_text(rows, fields))
  workdir_lib.write_atomic(paths['markdown'], text)
  plotting.save_png(plot(rows, fields, chosen), paths['png'])
  content.update(metrics=chosen, rows=rows, grouped=grouped)
  workdir_lib.write_atomic(paths['json'],
                           json.dumps(_json_ready(content), indent=2, default=str) + '\n')
  return {'rows': rows, 'grouped': grouped, 'metrics': chosen, 'paths': paths,
          'markdown': text}


def sweep_report(spec: str, root: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """The sweep file's report as markdown ('' without one). A report that
  fails is logged and named in the text: the tables above it still stand."""
  try:
    report = load_report(spec)
    return '' if report is None else report(root, rows).rstrip('\n') + '\n'
  except Exception as e:  # pylint: disable=broad-except
    logging.exception('The report of sweep file %s failed.', spec)
    return f'The report of sweep file {spec} failed: {error_message(e)}\n'


def any_failed(rows: Sequence[Mapping[str, Any]]) -> bool:
  return any(r['status'] in (FAILED, NONFINITE) for r in rows)
