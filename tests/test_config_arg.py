"""The one parser of config arguments (`file.py:smoke,rank=8`)."""

import importlib
import pathlib

import pytest

from experiments.configs import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_MODULES = sorted(
    '.'.join(p.relative_to(ROOT).with_suffix('').parts)
    for p in (ROOT / 'experiments' / 'configs').rglob('*.py')
    if p.stem not in ('__init__', 'common'))


def test_empty_argument_gives_the_defaults():
  for arg in (None, '', ' , '):
    parsed = common.parse_arg(arg, smoke=False, rank=25, scale=0.5, name='x',
                              dataset=('fashion_mnist', 'svhn'))
    assert parsed.to_dict() == dict(smoke=False, rank=25, scale=0.5, name='x',
                                    dataset='fashion_mnist')


def test_values_take_the_type_of_their_default():
  parsed = common.parse_arg('smoke,rank=8, scale=1e-3,name=abc,flag=false',
                            smoke=False, rank=25, scale=0.5, name='x', flag=True)
  assert parsed.smoke is True and parsed.flag is False
  assert parsed.rank == 8 and isinstance(parsed.rank, int)
  assert parsed.scale == pytest.approx(1e-3) and isinstance(parsed.scale, float)
  assert parsed.name == 'abc'


def test_bare_choice_selects_it():
  spec = dict(dataset=('fashion_mnist', 'svhn', 'cifar10'), smoke=False)
  assert common.parse_arg('svhn,smoke', **spec).to_dict() == dict(dataset='svhn', smoke=True)
  assert common.parse_arg('dataset=cifar10', **spec).dataset == 'cifar10'
  with pytest.raises(ValueError, match='choose one of'):
    common.parse_arg('dataset=mnist', **spec)


def test_unknown_argument_lists_the_valid_ones():
  with pytest.raises(ValueError) as error:
    common.parse_arg('smok', smoke=False, rank=25, dataset=('a', 'b'))
  message = str(error.value)
  assert "'smok'" in message
  assert 'smoke, rank=<int>, dataset=a|b' in message


@pytest.mark.parametrize('arg,match', [
    ('rank=eight', 'expected int'), ('smoke=maybe', 'expected true or false'),
    ('rank', 'needs a value')])
def test_bad_values_name_the_argument(arg, match):
  with pytest.raises(ValueError, match=match):
    common.parse_arg(arg, smoke=False, rank=25)


def test_result_is_locked():
  parsed = common.parse_arg('smoke', smoke=False)
  with pytest.raises(AttributeError):
    parsed.other = 1


@pytest.mark.parametrize('module', CONFIG_MODULES)
def test_every_config_rejects_a_typo(module):
  get_config = importlib.import_module(module).get_config
  with pytest.raises(ValueError, match="'smok'"):
    get_config('smok')


@pytest.mark.parametrize('module', CONFIG_MODULES)
def test_smoke_only_shrinks(module):
  get_config = importlib.import_module(module).get_config
  full, smoke = get_config(None), get_config('smoke')
  assert smoke.num_steps <= min(full.num_steps, 10)
  assert smoke.batch_size <= full.batch_size
  assert smoke.pretrain_steps <= full.pretrain_steps
  assert smoke.eval_examples <= full.eval_examples
  assert smoke.likelihood.name == full.likelihood.name
