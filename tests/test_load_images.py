"""Images of one split: evaluation images never open the training split."""

import gzip
import shutil

import ml_collections
import numpy as np
import pytest

from sosvae_jax import input_pipeline

IDX_DIR = input_pipeline.DEFAULT_IDX_DIR
TEST_IMAGES = 't10k-images-idx3-ubyte'


def _idx_cfg(directory) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source='idx', idx_dir=str(directory), train_split='train', eval_split='test',
      image_shape=(28, 28, 1)))


@pytest.fixture
def test_split_only(tmp_path):
  """A folder holding the IDX test images and no training split at all."""
  src = f'{IDX_DIR}/{TEST_IMAGES}.gz'
  try:
    shutil.copyfile(src, tmp_path / f'{TEST_IMAGES}.gz')
  except FileNotFoundError:
    pytest.skip(f'{src} not installed (Debian package dataset-fashion-mnist)')
  return tmp_path


def _reference_idx_images(path, num):
  """The first `num` images straight from the IDX bytes: 16-byte header, then rows."""
  with gzip.open(path) as f:
    data = np.frombuffer(f.read(), np.uint8)
  return data[16:16 + num * 784].reshape(num, 28, 28, 1)


def test_eval_images_need_no_training_split(test_split_only):
  cfg = _idx_cfg(test_split_only)
  images = input_pipeline.load_images(cfg, 'eval', 5)
  np.testing.assert_array_equal(
      images, _reference_idx_images(test_split_only / f'{TEST_IMAGES}.gz', 5))
  assert input_pipeline.load_images(cfg, 'eval').shape == (10000, 28, 28, 1)
  with pytest.raises(input_pipeline.DataNotFoundError, match='train-images'):
    input_pipeline.load_images(cfg, 'train', 5)


def test_first_images_of_a_sequence_source():
  images = [np.full((2, 2, 1), i, np.uint8) for i in range(4)]
  assert input_pipeline.first_images(images, 2).shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(input_pipeline.first_images(images)[:, 0, 0, 0], range(4))
  assert len(input_pipeline.first_images(images, 10)) == 4  # capped at the source
