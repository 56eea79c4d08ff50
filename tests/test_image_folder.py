"""The 'folder' source: PIL images checked file by file when the source is built."""

import numpy as np
from PIL import Image
import pytest

from experiments.configs import common
from experiments.configs import default
from sosvae_jax import config_checks
from sosvae_jax import input_pipeline

SHAPE = (8, 8, 1)


def _write_png(path, shape=SHAPE, seed=0):
  """A random uint8 PNG of [H, W, C] (C=1 grayscale, 3 RGB); returns its pixels."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  Image.fromarray(pixels[..., 0] if shape[-1] == 1 else pixels).save(path)
  return pixels


def _folder_cfg(folder, shape=SHAPE):
  cfg = common.fashion_mnist_data()
  cfg.source, cfg.folder_dir, cfg.image_shape = 'folder', str(folder), shape
  return cfg


def test_split_subfolders_load_in_sorted_order(tmp_path):
  train = [_write_png(tmp_path / 'train' / f'{i}.png', seed=i) for i in range(3)]
  test = [_write_png(tmp_path / 'test' / 'a' / f'{i}.png', seed=10 + i) for i in range(2)]
  (tmp_path / 'test' / 'notes.txt').write_text('not an image')  # Skipped by name.
  source = input_pipeline.get_source(_folder_cfg(tmp_path), 'train')
  assert len(source) == 3
  for i in range(3):
    assert source[i].dtype == np.uint8
    np.testing.assert_array_equal(source[i], train[i])
  eval_source = input_pipeline.get_source(_folder_cfg(tmp_path), 'eval')
  np.testing.assert_array_equal(input_pipeline.first_images(eval_source, 5), np.stack(test))
  batch = next(input_pipeline.train_batches(source, 2, seed=0, num_threads=1))
  assert batch.shape == (2,) + SHAPE


def test_flat_folder_serves_both_splits_and_converts_channels(tmp_path):
  _write_png(tmp_path / 'x.PNG', shape=(8, 8, 3))
  _write_png(tmp_path / 'y.bmp', shape=(8, 8, 1))
  for split in ('train', 'eval'):
    gray = input_pipeline.get_source(_folder_cfg(tmp_path), split)
    assert len(gray) == 2 and gray[0].shape == (8, 8, 1)
  rgb = input_pipeline.get_source(_folder_cfg(tmp_path, (8, 8, 3)), 'train')
  assert rgb[1].shape == (8, 8, 3)
  np.testing.assert_array_equal(rgb[1][..., 0], rgb[1][..., 2])  # Gray -> RGB.


def test_corrupt_file_is_named(tmp_path):
  for i in range(2):
    _write_png(tmp_path / f'{i}.png', seed=i)
  bad = tmp_path / '1.png'
  bad.write_bytes(bad.read_bytes()[:60])  # Truncated mid-stream.
  (tmp_path / '2.jpg').write_bytes(b'not a jpeg')
  with pytest.raises(ValueError, match=r'Image file .*1\.png cannot be read by PIL'):
    input_pipeline.get_source(_folder_cfg(tmp_path), 'train')
  bad.unlink()
  with pytest.raises(ValueError, match=r'Image file .*2\.jpg cannot be read by PIL'):
    input_pipeline.get_source(_folder_cfg(tmp_path), 'train')


def test_wrong_size_is_named_with_both_sizes(tmp_path):
  _write_png(tmp_path / 'ok.png')
  _write_png(tmp_path / 'wide.png', shape=(8, 10, 1))
  with pytest.raises(ValueError) as info:
    input_pipeline.get_source(_folder_cfg(tmp_path), 'train')
  message = str(info.value)
  assert str(tmp_path / 'wide.png') in message
  assert 'is 8x10 (HxW)' in message and 'needs 8x8' in message


def test_missing_split_subfolder_is_an_error(tmp_path):
  _write_png(tmp_path / 'train' / '0.png')
  with pytest.raises(input_pipeline.DataNotFoundError, match='subfolder train/ but no test/'):
    input_pipeline.get_source(_folder_cfg(tmp_path), 'eval')


def test_folder_source_needs_folder_dir():
  cfg = common.fashion_mnist_data()
  cfg.source = 'folder'
  with pytest.raises(ValueError, match='needs config.data.folder_dir'):
    input_pipeline.get_source(cfg, 'train')


def test_check_config_accepts_a_good_folder_and_flags_centre_crop(tmp_path):
  config = default.get_config('smoke')
  for i in range(config.batch_size):  # at least one batch of training images
    _write_png(tmp_path / f'{i}.png', shape=(28, 28, 1))
  config.data.source, config.data.folder_dir = 'folder', str(tmp_path)
  config_checks.check_config(config, num_devices=1)
  config.data.centre_crop = 20
  with pytest.raises(config_checks.ConfigError, match='config.data.centre_crop=20'):
    config_checks.check_config(config, num_devices=1)
