"""Classifier FID: labels, the cached feature classifier, streaming statistics."""

import struct

import ml_collections
import numpy as np
import pytest

from experiments.configs import common
from sosvae_jax import evaluation
from sosvae_jax import input_pipeline
from sosvae_jax.evaluation import classifier
from sosvae_jax.evaluation import labels as labels_lib

SETTINGS = classifier.ClassifierSettings(channels=(8,), feature_dim=16, num_steps=150,
                                         batch_size=32, learning_rate=3e-3)


def _write_idx(path, array):
  header = struct.pack('>HBB', 0, 8, array.ndim) + struct.pack('>' + 'I' * array.ndim,
                                                              *array.shape)
  path.write_bytes(header + array.astype(np.uint8).tobytes())


def _squares(n, seed):
  """Class k (0..3) is a bright 8x8 square in quadrant k of a noisy 28x28 image."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n)
  images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
  for i, k in enumerate(labels):
    top, left = 3 + 14 * (k // 2), 3 + 14 * (k % 2)
    images[i, top:top + 8, left:left + 8] = 220
  return images, labels


@pytest.fixture(scope='module')
def data_cfg(tmp_path_factory):
  folder = tmp_path_factory.mktemp('idx')
  for split, n, seed in (('train', 400, 0), ('test', 200, 1)):
    images, labels = _squares(n, seed)
    image_file, label_file = input_pipeline.IDX_FILES[split]
    _write_idx(folder / image_file, images)
    _write_idx(folder / label_file, labels)
  cfg = common.fashion_mnist_data()
  cfg.idx_dir = str(folder)
  cfg.name = 'squares'
  return cfg


def test_real_fashion_mnist_labels():
  cfg = common.fashion_mnist_data()
  train = labels_lib.load_labels(cfg, 'train')
  test = labels_lib.load_labels(cfg, 'eval')
  assert train.shape == (60000,) and test.shape == (10000,)
  np.testing.assert_array_equal(np.bincount(train), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(test), np.full(10, 1000))


def test_labels_errors_are_explained(tmp_path):
  cfg = common.fashion_mnist_data()
  cfg.source = 'folder'
  with pytest.raises(ValueError, match="source='folder' has no class labels"):
    labels_lib.load_labels(cfg, 'train')
  cfg = common.fashion_mnist_data()
  cfg.idx_dir = str(tmp_path)
  with pytest.raises(input_pipeline.DataNotFoundError, match='train-labels-idx1-ubyte'):
    labels_lib.load_labels(cfg, 'train')


@pytest.mark.slow
def test_trains_once_then_loads_from_cache(data_cfg, tmp_path, monkeypatch):
  trained = classifier.load_or_train_classifier(data_cfg, cache_dir=str(tmp_path),
                                                settings=SETTINGS)
  assert trained.test_accuracy > 0.95  # four easy classes; chance is 0.25
  assert trained.path.startswith(str(tmp_path / 'squares-'))
  assert trained.meta['feature_layer'] and trained.meta['num_classes'] == 4

  def no_training(*args, **kwargs):
    raise AssertionError('should have loaded the cached classifier')

  monkeypatch.setattr(classifier, '_train', no_training)
  again = classifier.load_or_train_classifier(data_cfg, cache_dir=str(tmp_path),
                                              settings=SETTINGS)
  assert again.path == trained.path and again.test_accuracy == trained.test_accuracy
  images = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
  np.testing.assert_array_equal(again.feature_fn()(images), trained.feature_fn()(images))
  other = classifier.ClassifierSettings(**{**SETTINGS.__dict__, 'seed': 1})
  with pytest.raises(AssertionError, match='cached'):  # other settings, other cache
    classifier.load_or_train_classifier(data_cfg, cache_dir=str(tmp_path), settings=other)


@pytest.mark.slow
def test_classifier_fid_separates_classes_and_streams_exactly(data_cfg, tmp_path):
  trained = classifier.load_or_train_classifier(data_cfg, cache_dir=str(tmp_path),
                                                settings=SETTINGS)
  fn = trained.feature_fn()
  test = input_pipeline.preprocess(input_pipeline.get_source(data_cfg, 'eval'))
  test = np.asarray(test)
  labels = labels_lib.load_labels(data_cfg, 'eval')
  stats = evaluation.statistics_in_chunks(fn, test, chunk_size=64)
  dense = fn(test).astype(np.float64)
  mu, cov = evaluation.feature_statistics(dense)
  np.testing.assert_allclose(stats[0], mu, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(stats[1], cov, rtol=1e-8, atol=1e-10)
  # Half of the test set against the other half: small; one class only: large.
  half = evaluation.frechet_distance(*evaluation.statistics_in_chunks(fn, test[::2], 64),
                                     *evaluation.statistics_in_chunks(fn, test[1::2], 64))
  one_class = evaluation.frechet_distance(
      *evaluation.statistics_in_chunks(fn, test[labels == 0], 64), *stats)
  assert one_class > 10 * half
  # Pixel values outside [0, 1] (Gaussian samples) are clipped before the network.
  np.testing.assert_array_equal(fn(test[:4] * 3 - 1), fn(np.clip(test[:4] * 3 - 1, 0, 1)))


def test_bad_settings():
  with pytest.raises(ValueError, match='num_steps=0'):
    classifier.ClassifierSettings(num_steps=0)


@pytest.mark.slow
def test_the_default_data_uses_the_shipped_classifier_without_training(tmp_path, monkeypatch):
  data_cfg = common.fashion_mnist_data()
  monkeypatch.setattr(classifier, '_train', lambda *a, **k: pytest.fail('trained anew'))
  trained = classifier.load_or_train_classifier(data_cfg, cache_dir=str(tmp_path))
  assert trained.path.startswith(classifier.SHIPPED_DIR)
  assert not list(tmp_path.iterdir())  # nothing written to the cache
  # The shipped parameters are the network its meta.json describes.
  test_images = input_pipeline.load_images(data_cfg, 'eval')
  test_labels = labels_lib.load_labels(data_cfg, 'eval')
  measured = classifier.accuracy(trained.model, trained.params, test_images, test_labels)
  assert measured == pytest.approx(trained.test_accuracy, abs=2e-4)
  assert measured >= 0.90
