"""The optional extras: one pinned set in pyproject.toml, requirements-extras.lock and the installer."""

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRAS = ('tensorboard', 'notebooks')
PIN = re.compile(r'^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)$')


def _pins(path):
  """{normalised name: version} of a lock file; every package line must be an exact pin."""
  pins = {}
  for line in path.read_text().splitlines():
    line = line.strip()
    if not line or line.startswith('#') or line.startswith('-c '):
      continue
    match = PIN.match(line)
    assert match, f'{path.name}: {line!r} is not an exact pin'
    pins[re.sub(r'[-_.]+', '-', match[1]).lower()] = match[2]
  return pins


def test_extras_pins_agree_with_the_lock_files():
  extras = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
      'optional-dependencies']
  base, locked = _pins(ROOT / 'requirements.lock'), _pins(ROOT / 'requirements-extras.lock')
  wanted = {'tensorboard': {'tensorboard'}, 'notebooks': {'jupyterlab', 'nbconvert'}}
  for name in EXTRAS:
    pins = dict(PIN.match(r).groups() for r in extras[name])
    assert set(pins) == wanted[name]
    for package, version in pins.items():
      assert locked[package] == version, package
  # The extras lock adds to the base lock; it never pins a package differently.
  assert not set(locked) & set(base)
  assert '-c requirements.lock' in (ROOT / 'requirements-extras.lock').read_text()


def test_one_documented_command_installs_the_extras():
  script = (ROOT / 'scripts' / 'install.sh').read_text()
  assert '--extras)' in script and 'pip install -q -r requirements-extras.lock' in script
  readme = (ROOT / 'README.md').read_text()
  assert 'bash scripts/install.sh --extras' in readme
