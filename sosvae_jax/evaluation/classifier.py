"""Classifier FID: Frechet distance on features of a classifier trained here.

Inception FID needs weights that cannot be fetched on an offline machine, and
Inception features of 28x28 grayscale images are of doubtful meaning anyway.
So sosvae_jax also trains a small convnet to classify the dataset itself
(Fashion-MNIST: the 10 clothing classes), once, and computes the Frechet
distance (frechet.py) on its penultimate-layer features. The number measures
the same thing as FID (distance between the feature Gaussians of generated
and real images) on another feature space: its values are NOT comparable
with Inception FID or with the papers' tables, only between runs evaluated
with the same classifier. Metric names say so: `fid_classifier_*`.

Caching: the trained classifier is stored under
`<cache_dir>/<dataset>-<hash>/` (default cache_dir
~/.cache/sosvae_jax/classifiers) as params.npz + meta.json, where the hash
covers the dataset identity (source, name, image shape, a fingerprint of the
training images and labels) and every training setting. Every workdir
evaluated with the same data and settings therefore uses the same network.

Shipped: SHIPPED_DIR holds the classifier of the default data (the Fashion-MNIST
IDX files) and default settings, trained once by this module (its meta.json
records how), so that a first evaluation does not spend minutes training it.
It is used only where its folder name, the same hash, matches: other data or
settings train their own.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sosvae_jax import input_pipeline
from sosvae_jax import progress as progress_lib
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.evaluation import labels as labels_lib

Array = jax.Array
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'sosvae_jax', 'classifiers')
SHIPPED_DIR = os.path.join(os.path.dirname(__file__), 'classifiers')
_FORMAT = 1  # bump when the network or the training changes


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
  """How the feature classifier is built and trained (all part of the cache key)."""

  channels: tuple[int, ...] = (32, 64)
  feature_dim: int = 128
  num_steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  seed: int = 0

  def __post_init__(self):
    for name in ('feature_dim', 'num_steps', 'batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'classifier {name}={getattr(self, name)} must be >= 1')
    if self.learning_rate <= 0:
      raise ValueError(f'classifier learning_rate={self.learning_rate} must be > 0')


class FeatureClassifier(nn.Module):
  """Conv (3x3) -> stride-2 convs -> dense features (ReLU) -> class logits."""

  channels: tuple[int, ...]
  feature_dim: int
  num_classes: int

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """x [N, H, W, C] in [0, 1] -> (features [N, feature_dim], logits [N, K])."""
    h = 2.0 * x - 1.0
    for i, c in enumerate(self.channels):
      h = nn.relu(nn.Conv(c, (3, 3), name=f'conv{i}a')(h))
      h = nn.relu(nn.Conv(c, (3, 3), strides=2, name=f'conv{i}b')(h))
    h = h.reshape((h.shape[0], -1))
    features = nn.relu(nn.Dense(self.feature_dim, name='features')(h))
    return features, nn.Dense(self.num_classes, name='logits')(features)


@dataclasses.dataclass
class TrainedClassifier:
  """A trained feature network with its test accuracy and where it is cached."""

  params: Any
  model: FeatureClassifier
  test_accuracy: float
  path: str
  meta: dict

  def feature_fn(self) -> Callable[[Array], np.ndarray]:
    """images [N, H, W, C] in [0, 1] -> features [N, feature_dim] (numpy).

    Images are clipped to [0, 1] first (samples of a Gaussian p(x|z) leave
    that range; real images never do).
    """
    apply = _feature_apply(self.model)
    return lambda images: np.asarray(apply(self.params, jnp.asarray(images)))


@functools.lru_cache(maxsize=4)
def _feature_apply(model: FeatureClassifier):
  """Jitted (params, images) -> features, one per architecture (modules hash by
  structure), so several evaluations in one process compile it once."""
  return jax.jit(lambda p, x: model.apply(
      {'params': p}, jnp.clip(x.astype(jnp.float32), 0.0, 1.0))[0])


def _data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
  """sha256 of the count and the first 1000 images and labels (cheap, distinctive)."""
  digest = hashlib.sha256(str((len(images), images.shape[1:])).encode())
  digest.update(np.ascontiguousarray(images[:1000]).tobytes())
  digest.update(np.ascontiguousarray(labels[:1000]).tobytes())
  return digest.hexdigest()


def cache_key(data_cfg, settings: ClassifierSettings, fingerprint: str) -> str:
  """'<dataset>-<12 hex>' naming the cache folder."""
  spec = {'format': _FORMAT, 'source': data_cfg.source, 'name': data_cfg.get('name', ''),
          'image_shape': list(data_cfg.image_shape), 'data': fingerprint,
          'settings': dataclasses.asdict(settings)}
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  return f'{data_cfg.get("name", "") or data_cfg.source}-{digest}'


def _train(model: FeatureClassifier, images: np.ndarray, labels: np.ndarray,
           settings: ClassifierSettings) -> Any:
  """Adam on softmax cross-entropy over random minibatches; returns params."""
  key = jax.random.PRNGKey(settings.seed)
  params = jax.jit(model.init)(key, jnp.zeros((1,) + images.shape[1:]))['params']
  tx = optax.adam(settings.learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      _, logits = model.apply({'params': p}, input_pipeline.preprocess(x))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(settings.seed)
  progress = progress_lib.Progress('Feature classifier training', settings.num_steps)
  for i in range(settings.num_steps):
    idx = rng.integers(0, len(images), settings.batch_size)
    params, opt_state, loss = step(params, opt_state, images[idx], labels[idx])
    progress.update(i + 1, lambda: f'loss {float(loss):.3f}')
  return params


def accuracy(model: FeatureClassifier, params, images: np.ndarray,
             labels: np.ndarray, chunk_size: int = 1000) -> float:
  """Share of uint8 images [N, H, W, C] classified as their label."""
  apply = jax.jit(lambda p, x: jnp.argmax(
      model.apply({'params': p}, input_pipeline.preprocess(x))[1], -1))
  hits = sum(int(np.sum(np.asarray(apply(params, images[i:i + chunk_size]))
                        == labels[i:i + chunk_size]))
             for i in range(0, len(images), chunk_size))
  return hits / len(images)


def _save(path: str, params, meta: dict) -> None:
  """Writes params.npz + meta.json into a temporary folder, then renames it."""
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix='.tmp-')
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep='/')
  try:
    np.savez(os.path.join(tmp, 'params.npz'), **{k: np.asarray(v) for k, v in flat.items()})
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
      json.dump(meta, f, indent=2)
  except OSError as e:  # a full disk: no half-written cache folder is left
    shutil.rmtree(tmp, ignore_errors=True)
    raise workdir_lib.write_error(path, e) from e
  try:
    os.rename(tmp, path)
  except OSError:  # Another process cached the same classifier meanwhile.
    shutil.rmtree(tmp, ignore_errors=True)


def _load(path: str, model: FeatureClassifier) -> tuple[Any, dict] | None:
  """(params, meta) from a cache folder, or None if it is absent or unreadable."""
  try:
    with open(os.path.join(path, 'meta.json')) as f:
      meta = json.load(f)
    with np.load(os.path.join(path, 'params.npz')) as data:
      flat = {tuple(k.split('/')): jnp.asarray(data[k]) for k in data.files}
  except (OSError, ValueError) as e:
    if os.path.exists(path):
      logging.warning('Cached classifier %s is unreadable (%s); training anew.', path, e)
    return None
  params = flax.traverse_util.unflatten_dict(flat)
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1,) + tuple(meta['image_shape'])))['params']
  if jax.tree.structure(expected) != jax.tree.structure(params):
    logging.warning('Cached classifier %s does not fit the network; training anew.', path)
    return None
  return params, meta


def load_or_train_classifier(
    data_cfg,
    *,
    cache_dir: str | None = None,
    settings: ClassifierSettings | None = None,
    retrain: bool = False,
) -> TrainedClassifier:
  """The cached (or shipped) feature classifier of a dataset, training it on first use.

  Args:
    data_cfg: config.data of the runs to compare (train split for training,
      eval split for the reported test accuracy).
    cache_dir: parent folder of the cache (default DEFAULT_CACHE_DIR).
    settings: network and training settings.
    retrain: train and overwrite even if a cached classifier exists.
  """
  settings = settings or ClassifierSettings()
  train_images = input_pipeline.load_images(data_cfg, 'train')
  train_labels = labels_lib.load_labels(data_cfg, 'train')
  if len(train_labels) != len(train_images):
    raise ValueError(f'{len(train_images)} training images but {len(train_labels)} '
                     'labels: the label file does not belong to these images.')
  num_classes = int(train_labels.max()) + 1
  model = FeatureClassifier(tuple(settings.channels), settings.feature_dim, num_classes)
  cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
  path = os.path.join(cache_dir, cache_key(
      data_cfg, settings, _data_fingerprint(train_images, train_labels)))
  for where in () if retrain else (path, os.path.join(SHIPPED_DIR, os.path.basename(path))):
    loaded = _load(where, model)
    if loaded is not None:
      params, meta = loaded
      logging.info('Using the %s feature classifier %s (test accuracy %.4f).',
                   'cached' if where == path else 'shipped', where, meta['test_accuracy'])
      return TrainedClassifier(params, model, meta['test_accuracy'], where, meta)
  # Before training: a cache folder that cannot be made would lose its result.
  workdir_lib.make_folder(cache_dir, '--config.evaluation.classifier_cache_dir')
  logging.info('Training the feature classifier for classifier FID (%d steps); '
               'cached afterwards in %s.', settings.num_steps, path)
  t0 = time.time()
  params = _train(model, train_images, train_labels, settings)
  test_images = input_pipeline.load_images(data_cfg, 'eval')
  test_labels = labels_lib.load_labels(data_cfg, 'eval')
  test_accuracy = accuracy(model, params, test_images, test_labels)
  meta = {'test_accuracy': test_accuracy, 'num_classes': num_classes,
          'feature_dim': settings.feature_dim, 'feature_layer': 'features (ReLU)',
          'image_shape': list(data_cfg.image_shape), 'dataset': data_cfg.get('name', ''),
          'source': data_cfg.source, 'settings': dataclasses.asdict(settings),
          'train_examples': len(train_images), 'test_examples': len(test_images),
          'train_seconds': round(time.time() - t0, 1)}
  if retrain and os.path.exists(path):
    shutil.rmtree(path)
  _save(path, params, meta)
  logging.info('Feature classifier trained: test accuracy %.4f -> %s', test_accuracy, path)
  return TrainedClassifier(params, model, test_accuracy, path, meta)
