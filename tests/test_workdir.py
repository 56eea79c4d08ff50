"""One run per workdir, stale locks never block, config.json keeps the original."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sosvae_jax import workdir as workdir_lib


def test_second_run_in_the_same_workdir_is_refused(tmp_path):
  with workdir_lib.WorkdirLock(str(tmp_path)):
    # Another process (fcntl locks are per open file description, so a second
    # open in this process is refused too, as another process would be).
    with pytest.raises(workdir_lib.WorkdirError, match=r'in use by a run.*pid \d+ on'):
      with workdir_lib.WorkdirLock(str(tmp_path)):
        pass
  with workdir_lib.WorkdirLock(str(tmp_path)):  # released on exit
    pass


def test_lock_of_a_killed_process_does_not_block(tmp_path):
  script = textwrap.dedent(f"""
      import os, signal
      from sosvae_jax import workdir
      lock = workdir.WorkdirLock({str(tmp_path)!r}).__enter__()
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  proc = subprocess.run([sys.executable, '-c', script], check=False)
  assert proc.returncode == -9
  assert 'pid' in (tmp_path / '.lock').read_text()  # its record is still there
  with workdir_lib.WorkdirLock(str(tmp_path)):
    pass


def test_lock_held_by_another_process_names_it(tmp_path):
  script = textwrap.dedent(f"""
      import sys, time
      from sosvae_jax import workdir
      with workdir.WorkdirLock({str(tmp_path)!r}):
        print('locked', flush=True)
        sys.stdin.readline()
  """)
  proc = subprocess.Popen([sys.executable, '-c', script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir_lib.WorkdirError, match=f'pid {proc.pid} on'):
      with workdir_lib.WorkdirLock(str(tmp_path)):
        pass
  finally:
    proc.communicate('\n', timeout=60)


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / 'run'
  path.write_text('x')
  with pytest.raises(workdir_lib.WorkdirError, match='is a file, not a folder'):
    workdir_lib.check_workdir_path(str(path))
  workdir_lib.check_workdir_path(str(tmp_path / 'new' / 'run'))
  assert (tmp_path / 'new' / 'run').is_dir()


@pytest.mark.parametrize('where', ['name_too_long', 'proc'])
def test_workdir_that_cannot_be_created(tmp_path, where):
  # Root passes the permission checks: only creating the folder tells.
  if where == 'proc' and not os.path.isdir('/proc/self'):
    pytest.skip('no /proc')
  path = str(tmp_path / ('x' * 300)) if where == 'name_too_long' else '/proc/sosvae_run'
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"--workdir='{path}' cannot be created \(.*\); pass a folder"):
    workdir_lib.check_workdir_path(path)


def test_a_dry_test_of_the_workdir_leaves_nothing(tmp_path):
  workdir_lib.check_workdir_path(str(tmp_path / 'new' / 'run'), keep=False)
  assert list(tmp_path.iterdir()) == []
  (tmp_path / 'old').mkdir()
  workdir_lib.check_workdir_path(str(tmp_path / 'old'), keep=False)
  assert (tmp_path / 'old').is_dir()  # an existing folder stays


def test_config_json_keeps_the_first_launch(tmp_path):
  first = json.dumps({'num_steps': 2500, 'likelihood': {'rank': 25}})
  assert workdir_lib.record_launch(str(tmp_path), first, 0) == {}
  second = json.dumps({'num_steps': 100, 'likelihood': {'rank': 25}})
  changes = workdir_lib.record_launch(str(tmp_path), second, 2500)
  assert changes == {'num_steps': (2500, 100)}
  assert json.loads((tmp_path / 'config.json').read_text())['num_steps'] == 2500
  launches = [json.loads(l) for l in (tmp_path / 'launches.jsonl').read_text().splitlines()]
  assert [l['step'] for l in launches] == [0, 2500]
  assert launches[1]['changes'] == {'num_steps': [2500, 100]}
  assert workdir_lib.effective_config(str(tmp_path))['num_steps'] == 100
  with open(os.path.join(tmp_path, 'launches.jsonl'), 'a') as f:
    f.write('{"time": "x", "chan')  # a torn line does not hide the last good one
  assert workdir_lib.effective_config(str(tmp_path))['num_steps'] == 100


@pytest.mark.slow
def test_relaunch_with_other_values_keeps_config_json_and_records_the_change(
    tmp_path, caplog):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from sosvae_jax import train  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(config, str(tmp_path))
    config.num_steps, config.eval_examples = 3, 8  # a finished run: nothing to do
    with caplog.at_level('WARNING'):
      state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  assert json.loads((tmp_path / 'config.json').read_text())['num_steps'] == 6
  launches = [json.loads(l) for l in (tmp_path / 'launches.jsonl').read_text().splitlines()]
  assert [l['step'] for l in launches] == [0, 6]
  assert launches[1]['changes'] == {'eval_examples': [16, 8], 'num_steps': [6, 3]}
  assert 'eval_examples: 16 -> 8; num_steps: 6 -> 3' in caplog.text
  # Readers see the run as last launched.
  assert checkpoints.load_config(str(tmp_path)).num_steps == 3
  # The lock was released when each run ended.
  with workdir_lib.WorkdirLock(str(tmp_path)):
    pass
