"""`~` in every path flag and path config field leads to HOME, never to a folder named `~`."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

from absl import flags
import ml_collections
import numpy as np
import pytest

from experiments import cli
from sosvae_jax import input_pipeline
from sosvae_jax.evaluation import results as results_lib
from sosvae_jax.evaluation import settings

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
  """A fresh HOME, and a working directory beside it that must stay empty."""
  (tmp_path / 'home').mkdir()
  (tmp_path / 'cwd').mkdir()
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  return tmp_path / 'home'


def _command(home, module, *args):
  """(returncode, stderr) of `python -m module args` run in HOME's sibling cwd/."""
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=home.parent / 'cwd',
                        text=True, capture_output=True, timeout=300,
                        env={**os.environ, 'HOME': str(home), 'JAX_PLATFORMS': 'cpu'})
  assert not os.listdir(home.parent / 'cwd'), proc.stderr[-3000:]  # no `~` folder
  return proc.returncode, proc.stderr


def test_path_flags_expand_home(home):
  values = flags.FlagValues()
  cli.DEFINE_path('out', None, 'a path', flag_values=values)
  cli.DEFINE_path_list('runs', None, 'paths', flag_values=values)
  values(['prog', '--out=~/x', '--runs=~/a,b,~/c'])
  assert values.out == f'{home}/x'
  assert values.runs == [f'{home}/a', 'b', f'{home}/c']
  assert values['out'].serialize() == f'--out={home}/x'


def test_data_folders_expand_home(home):
  data = ml_collections.ConfigDict({'idx_dir': '~/idx', 'tfds_data_dir': '~/tfds',
                                    'folder_dir': '~/images'})
  for field, name in (('idx_dir', 'idx'), ('tfds_data_dir', 'tfds'),
                      ('folder_dir', 'images')):
    assert input_pipeline.data_folder(data, field) == f'{home}/{name}'
  empty = ml_collections.ConfigDict({'tfds_data_dir': ''})
  assert input_pipeline.data_folder(empty, 'idx_dir') == input_pipeline.DEFAULT_IDX_DIR
  assert not input_pipeline.data_folder(empty, 'tfds_data_dir')
  assert input_pipeline.data_folder(empty, 'folder_dir') is None
  (home / 'images').mkdir()
  with pytest.raises(input_pipeline.DataNotFoundError, match=f'{home}/images holds no image'):
    input_pipeline.get_source(ml_collections.ConfigDict(
        {'source': 'folder', 'folder_dir': '~/images', 'train_split': 'train',
         'eval_split': 'test', 'image_shape': (28, 28, 1)}), 'train')


def test_evaluation_paths_expand_home(home):
  s = settings.from_config({'classifier_cache_dir': '~/cache',
                            'inception_weights': '~/inception.npz'})
  assert (s.classifier_cache_dir, s.inception_weights) == (f'{home}/cache',
                                                           f'{home}/inception.npz')
  assert settings.from_config(None).classifier_cache_dir is None
  assert any(f"inception_weights='{home}/inception.npz' does not exist" in p
             for p in s.problems())
  (home / 'inception.npz').write_bytes(b'')
  assert not s.problems()


def _idx_files(folder):
  """The two image files of Fashion-MNIST, tiny; the training one cut short, so
  that training stops with exit 2 once the workdir is made, before compiling."""
  import gzip  # pylint: disable=g-import-not-at-top
  folder.mkdir()
  for name, n in (('train-images-idx3-ubyte', 64), ('t10k-images-idx3-ubyte', 16)):
    header = bytes([0, 0, 8, 3]) + b''.join(v.to_bytes(4, 'big') for v in (n, 28, 28))
    raw = gzip.compress(header + bytes(n * 28 * 28))
    (folder / (name + '.gz')).write_bytes(raw[:len(raw) // 2] if 'train' in name else raw)


def test_main(home):
  shutil.copy(ROOT / 'experiments' / 'configs' / 'default.py', home / 'default.py')
  _idx_files(home / 'idx')
  code, err = _command(home, 'experiments.main', '--config=~/default.py:smoke',
                       '--workdir=~/run', '--config.data.idx_dir=~/idx')
  assert code == 2 and f'{home}/idx/train-images-idx3-ubyte[.gz]' in err, err[-3000:]
  assert os.path.exists(home / 'run' / '.lock')  # the lock of the run's folder
  for line in ('--config=~/default.py:smoke resolves to', f'--workdir=~/run resolves to {home}/run',
               f'config.data.idx_dir=~/idx resolves to {home}/idx'):
    assert line in err, err[-3000:]


@pytest.mark.slow
def test_sweep(home):
  (home / 'seeds.py').write_text("def get_sweep():\n  return [{'seed': 0}, {'seed': 1}]\n")
  code, err = _command(home, 'experiments.sweep', f'--config={ROOT}/experiments/configs/'
                       'sigma_vae/beta_vae.py:smoke', '--workdir=~/sweep',
                       '--sweep=~/seeds.py', '--mode=print')
  assert code == 0, err[-3000:]
  manifest = json.loads((home / 'sweep' / 'sweep.json').read_text())
  assert manifest['sweep_file'] == f'{home}/seeds.py'
  assert f'--workdir=~/sweep resolves to {home}/sweep' in err


@pytest.mark.slow
def test_figures(home):
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.record_launch(str(home / 'run'), default.get_config('smoke').to_json_best_effort(), 0)
  code, err = _command(home, 'experiments.figures', '--workdir=~/run', '--out=~/figures')
  # A run without checkpoints: --out is made before the model is read.
  assert code == 2 and f'No checkpoint under {home}/run' in err, err[-3000:]
  assert os.path.isdir(home / 'figures')


def test_report(home):
  for run in ('a', 'b'):
    (home / run / 'eval').mkdir(parents=True)
    (home / run / 'eval' / results_lib.RESULTS_JSON).write_text(json.dumps(
        {'metrics': {'elbo': -1.0}, 'likelihood': 'x', 'sampler': 'prior', 'step': 0,
         'description': 'z ~ N(0, I)', 'eval_examples': 1, 'num_samples': 2}))
    images = np.zeros((2, 28, 28, 1), np.float32)
    np.savez(home / run / 'eval' / results_lib.SAMPLES_NPZ, means=images, samples=images)
  code, err = _command(home, 'experiments.report', '--workdirs=~/a,~/b', '--out=~/report')
  assert code == 0, err[-3000:]
  assert os.path.exists(home / 'report' / 'report.md')
  assert f'--workdirs=~/b resolves to {home}/b' in err
