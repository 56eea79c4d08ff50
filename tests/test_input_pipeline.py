"""IDX reader, tfds sources, batching order and clear missing-data errors."""

import gzip
import os
import struct

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import common
from sosvae_jax import input_pipeline

REAL_IDX = '/usr/share/datasets/fashion-mnist'


def _write_idx(path, array, gz=False):
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack('>' + 'I' * array.ndim, *array.shape)
  opener = gzip.open if gz else open
  with opener(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize('gz', [False, True])
def test_read_idx_round_trip(tmp_path, gz):
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  name = 'train-images-idx3-ubyte'
  _write_idx(str(tmp_path / (name + ('.gz' if gz else ''))), images, gz=gz)
  got = input_pipeline.load_idx_images(str(tmp_path), 'train')
  np.testing.assert_array_equal(got, images[..., None])


def test_truncated_idx_is_reported(tmp_path):
  path = tmp_path / 'train-images-idx3-ubyte'
  _write_idx(str(path), np.zeros((5, 28, 28)))
  with open(path, 'r+b') as f:
    f.truncate(100)
  with pytest.raises(ValueError, match='truncated'):
    input_pipeline.read_idx(str(path))


def test_missing_idx_names_the_package(tmp_path):
  with pytest.raises(input_pipeline.DataNotFoundError, match='dataset-fashion-mnist'):
    input_pipeline.load_idx_images(str(tmp_path), 'train')


@pytest.mark.skipif(not os.path.exists(REAL_IDX), reason='Debian dataset-fashion-mnist not installed')
def test_real_fashion_mnist_files():
  cfg = common.fashion_mnist_data()
  train = input_pipeline.get_source(cfg, 'train')
  test = input_pipeline.get_source(cfg, 'eval')
  assert train.shape == (60000, 28, 28, 1) and test.shape == (10000, 28, 28, 1)
  assert train.dtype == np.uint8 and 60 < train.mean() < 90  # mostly dark background


def _tfds_cfg(name='fashion_mnist', shape=(28, 28, 1)):
  cfg = common.fashion_mnist_data()
  cfg.source, cfg.name, cfg.image_shape = 'tfds', name, shape
  return cfg


def test_tfds_source_through_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    source = input_pipeline.get_source(_tfds_cfg(), 'train')
    assert len(source) == 12
    assert source[3].shape == (28, 28, 1) and source[3].dtype == np.uint8


def test_tfds_resize_and_grayscale_for_colour_datasets():
  with tfds.testing.mock_data(num_examples=4):
    source = input_pipeline.get_source(_tfds_cfg('cifar10', (16, 16, 1)), 'train')
    assert source[0].shape == (16, 16, 1)


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
  cfg = _tfds_cfg('cifar10', (32, 32, 3))
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(input_pipeline.DataNotFoundError, match='tfds build cifar10 --file_format=array_record'):
    input_pipeline.get_source(cfg, 'train')


def test_unknown_source_and_dataset():
  cfg = _tfds_cfg('imagenet')
  with pytest.raises(ValueError, match='choose one of'):
    input_pipeline.get_source(cfg, 'train')
  cfg.source = 'hdf5'
  with pytest.raises(ValueError, match="'hdf5'"):
    input_pipeline.get_source(cfg, 'train')


def test_batches_are_a_function_of_seed_and_step():
  source = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
  full = input_pipeline.train_batches(source, 4, seed=3, num_threads=1)
  first = [next(full) for _ in range(30)]
  resumed = input_pipeline.train_batches(source, 4, seed=3, start_step=17, num_threads=1)
  for i in range(17, 30):
    np.testing.assert_array_equal(next(resumed), first[i])
  # An epoch (12 full batches of 4) visits 48 distinct images, then reshuffles.
  epoch = np.concatenate(first[:12]).ravel()
  assert len(set(epoch.tolist())) == 48
  assert not np.array_equal(np.concatenate(first[12:24]).ravel(), epoch)
  other = input_pipeline.train_batches(source, 4, seed=4, num_threads=1)
  assert not np.array_equal(next(other), first[0])


def test_process_shards_are_disjoint():
  source = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
  seen = []
  for p in range(2):
    ds = input_pipeline.batched_dataset(source, 5, seed=0, repeat=False, process_index=p, process_count=2)
    seen.append(set(np.concatenate([ds[i] for i in range(len(ds))]).ravel().tolist()))
  assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 40


def test_truncated_gzip_idx_names_the_file(tmp_path):
  name = 'train-images-idx3-ubyte'
  _write_idx(str(tmp_path / (name + '.gz')), np.zeros((50, 28, 28)), gz=True)
  raw = (tmp_path / (name + '.gz')).read_bytes()
  (tmp_path / (name + '.gz')).write_bytes(raw[:len(raw) // 2])
  with pytest.raises(input_pipeline.DataError, match=f'{tmp_path / name}.*EOFError.*idx_dir'):
    input_pipeline.load_idx_images(str(tmp_path), 'train')


@pytest.mark.parametrize('header', [b'\x00\x00\x0d\x03', b'\x00\x00\x08\x09', b'PK\x03\x04',
                                    b'\x00\x00'])
def test_corrupt_idx_header_names_the_file(tmp_path, header):
  path = tmp_path / 'train-images-idx3-ubyte'
  path.write_bytes(header + bytes(200)[:max(0, 200 - len(header))] if len(header) == 4 else header)
  with pytest.raises(input_pipeline.DataError, match=str(path)):
    input_pipeline.read_idx(str(path))


def test_tfds_with_no_data_folder_at_all_says_tfds_build(tmp_path, monkeypatch):
  # A fresh user: no ~/tensorflow_datasets (here: TFDS_DATA_DIR pointing
  # nowhere) and no --config.data.tfds_data_dir; tfds raises a KeyError.
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'absent'))
  cfg = _tfds_cfg('mnist', (28, 28, 1))
  cfg.tfds_data_dir = None
  with pytest.raises(input_pipeline.DataNotFoundError,
                     match='tfds build mnist --file_format=array_record'):
    input_pipeline.get_source(cfg, 'train')


def test_idx_file_that_holds_no_images_names_the_file(tmp_path):
  # A labels file (one dimension) saved under the image file's name.
  _write_idx(str(tmp_path / 'train-images-idx3-ubyte'), np.zeros(64))
  with pytest.raises(input_pipeline.DataError,
                     match=rf'{tmp_path}/train-images-idx3-ubyte.*shape \(64,\).*labels file'):
    input_pipeline.load_idx_images(str(tmp_path), 'train')


def test_idx_images_of_another_size_name_the_file(tmp_path):
  _write_idx(str(tmp_path / 'train-images-idx3-ubyte'), np.zeros((8, 32, 32)))
  cfg = common.fashion_mnist_data()
  cfg.idx_dir = str(tmp_path)
  with pytest.raises(input_pipeline.DataError,
                     match=rf'{tmp_path}/train-images-idx3-ubyte.*32x32 images.*source=folder'):
    input_pipeline.get_source(cfg, 'train')
