"""Datasets as random-access uint8 image sources, batched by grain.

Sources:
  'idx':  the IDX files of (Fashion-)MNIST, e.g. those of Debian's
          dataset-fashion-mnist package under /usr/share/datasets/fashion-mnist.
  'tfds': a dataset prepared by the user in ArrayRecord format, read through
          tfds.data_source (no TensorFlow needed at run time).
  'folder': image files (png/jpg/jpeg/bmp) under config.data.folder_dir,
          decoded by PIL; every file is checked when the source is built.

Batches are [B, H, W, C] uint8; scaling to [0, 1] happens inside the jitted
step (`preprocess`). The batch order is a pure function of (seed, step):
grain reshuffles every epoch from the seed, and `train_batches(..., start_step)`
resumes exactly where a checkpoint left off.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Iterator, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sosvae_jax import paths

Array = jax.Array

DEFAULT_IDX_DIR = '/usr/share/datasets/fashion-mnist'
TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'svhn_cropped', 'celeb_a')
SOURCES = ('idx', 'tfds', 'folder')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
# config.data's folder fields and their defaults (None: unset).
FOLDER_FIELDS = {'idx_dir': DEFAULT_IDX_DIR, 'tfds_data_dir': None, 'folder_dir': None}


class DataNotFoundError(FileNotFoundError):
  """A dataset is missing or not prepared; the message says how to get it."""


class DataError(ValueError):
  """A data file exists but cannot be used (corrupt, truncated, wrong size);
  the message names the file and says what to do."""


def data_folder(data_cfg, field: str) -> str | None:
  """config.data.<field> (a key of FOLDER_FIELDS) with `~` expanded; its
  default where the config lacks the field.

  Every reader of these fields goes through here: a config value passes no
  shell, so `~/data` would otherwise be a folder named `~`.
  """
  value = data_cfg.get(field, FOLDER_FIELDS[field])
  return paths.expand_user(value, f'config.data.{field}') if value else value


# ----------------------------------------------------------------------------
# IDX files.
# ----------------------------------------------------------------------------
def _open_maybe_gz(path: str):
  if os.path.exists(path):
    return open(path, 'rb')
  if os.path.exists(path + '.gz'):
    return gzip.open(path + '.gz', 'rb')
  raise DataNotFoundError(path)


_IDX_FIX = ('download it again (or reinstall `dataset-fashion-mnist`), or set '
            '--config.data.idx_dir to a folder holding intact IDX files')


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (plain or .gz): the (Fashion-)MNIST container format.

  Header: two zero bytes, a type code (0x08 = uint8), the number of
  dimensions, then one big-endian uint32 per dimension. A file that is not
  IDX, or is cut short, raises DataError naming it.
  """
  fix = _IDX_FIX
  try:
    with _open_maybe_gz(path) as f:
      data = f.read()
  # gzip raises EOFError for a cut-short file, BadGzipFile / zlib.error for
  # damaged bytes: the user needs the file's name either way.
  except (EOFError, OSError, zlib.error) as e:
    if isinstance(e, DataNotFoundError):
      raise
    raise DataError(f'IDX file {path}[.gz] cannot be read ({type(e).__name__}: {e}); '
                    f'{fix}.') from None
  if len(data) < 4:
    raise DataError(f'IDX file {path}[.gz] holds only {len(data)} bytes; {fix}.')
  zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
    raise DataError(f'IDX file {path}[.gz] has no uint8 IDX header (first bytes '
                    f'{data[:4]!r}, expected 00 00 08 and 1-4 dimensions); {fix}.')
  shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise DataError(f'IDX file {path}[.gz]: its header says {shape} but it holds '
                    f'{array.size} bytes of images (truncated download?); {fix}.')
  return array.reshape(shape)


def load_idx_images(directory: str, split: str) -> np.ndarray:
  """[N, 28, 28, 1] uint8 images of an IDX split ('train' or 'test')."""
  if split not in IDX_FILES:
    raise ValueError(f'IDX split {split!r}: choose one of {sorted(IDX_FILES)}.')
  path = os.path.join(directory, IDX_FILES[split][0])
  try:
    images = read_idx(path)
  except DataNotFoundError:
    raise DataNotFoundError(
        f'Fashion-MNIST IDX file {path}[.gz] not found. Install it with '
        '`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or '
        'set --config.data.idx_dir to a folder holding the four IDX files '
        '(train-images-idx3-ubyte[.gz], ...).') from None
  if images.ndim != 3:  # e.g. a labels file (one dimension) under an image file's name
    raise DataError(f'IDX file {path}[.gz] holds an array of shape {images.shape}, not '
                    f'images [N, H, W] (a labels file?); {_IDX_FIX}.')
  return images[..., None]


# ----------------------------------------------------------------------------
# tfds ArrayRecord sources.
# ----------------------------------------------------------------------------
def _tfds_data_source(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  # tfds signals "not prepared" in many ways; KeyError is an empty splits
  # list, e.g. no ~/tensorflow_datasets at all.
  except (NotImplementedError, FileNotFoundError, AssertionError, ValueError,
          KeyError) as e:
    where = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
    raise DataNotFoundError(
        f'tfds dataset {name!r} (split {split!r}) is not prepared in ArrayRecord '
        f'format under {where}. Prepare it once on a machine with network: '
        f'`tfds build {name} --file_format=array_record` (add --data_dir=DIR '
        'and pass --config.data.tfds_data_dir=DIR), or use '
        "--config.data.source=idx for Fashion-MNIST. Original error: "
        f'{type(e).__name__}: {str(e).splitlines()[0]}') from None


def _to_image_shape(image: np.ndarray, image_shape: Sequence[int],
                    centre_crop: int | None) -> np.ndarray:
  """Crops, resizes and converts channels of one uint8 image [h, w, c]."""
  height, width, channels = image_shape
  if centre_crop:
    h, w = image.shape[:2]
    top, left = (h - centre_crop) // 2, (w - centre_crop) // 2
    image = image[top:top + centre_crop, left:left + centre_crop]
  if image.shape[-1] == 3 and channels == 1:
    pil = Image.fromarray(image).convert('L')
  elif image.shape[-1] == 1 and channels == 3:
    pil = Image.fromarray(image[..., 0]).convert('RGB')
  else:
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if pil.size != (width, height):
    pil = pil.resize((width, height), Image.BILINEAR)
  out = np.asarray(pil, np.uint8)
  return out.reshape(height, width, channels)


class _TfdsImages:
  """Random-access view of a tfds source yielding [H, W, C] uint8 images."""

  def __init__(self, source, image_shape, centre_crop):
    self._source, self._shape, self._crop = source, tuple(image_shape), centre_crop

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> np.ndarray:
    return _to_image_shape(np.asarray(self._source[index]['image']), self._shape,
                           self._crop)


# ----------------------------------------------------------------------------
# Image folders.
# ----------------------------------------------------------------------------
_PIL_MODES = {1: 'L', 3: 'RGB'}


def _image_files(directory: str) -> list[str]:
  """Image files under `directory` (recursive), sorted for a fixed order."""
  paths = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    paths.extend(os.path.join(root, f) for f in sorted(files)
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  return paths


def folder_image_paths(folder_dir: str, split_name: str,
                       other_split: str | None = None) -> list[str]:
  """The image files of a split of an image folder.

  Files under `folder_dir/split_name/` if that subfolder exists, else every
  image under `folder_dir` (the same files for training and evaluation).

  Args:
    folder_dir: config.data.folder_dir.
    split_name: config.data.train_split or eval_split, e.g. 'train'.
    other_split: the name of the other split; when only that subfolder
      exists, falling back to every file would evaluate on training images
      (or train on test images), so it is an error instead.

  Raises:
    DataNotFoundError: the folder is missing, a split subfolder is missing
      while the other one exists, or there are no image files.
  """
  if not folder_dir or not os.path.isdir(folder_dir):
    raise DataNotFoundError(
        f'Image folder config.data.folder_dir={folder_dir!r} does not exist; set '
        '--config.data.folder_dir to a folder of images '
        f'({"/".join(IMAGE_EXTENSIONS)}), optionally split into subfolders '
        'named by config.data.train_split / eval_split.')
  split_dir = os.path.join(folder_dir, split_name)
  if os.path.isdir(split_dir):
    directory = split_dir
  elif other_split and other_split != split_name and os.path.isdir(
      os.path.join(folder_dir, other_split)):
    raise DataNotFoundError(
        f'Image folder {folder_dir} has a subfolder {other_split}/ but no '
        f'{split_name}/; add {split_dir}, or set the split names '
        '(--config.data.train_split / --config.data.eval_split) to existing '
        'subfolders.')
  else:
    directory = folder_dir
  paths = _image_files(directory)
  if not paths:
    raise DataNotFoundError(
        f'Image folder {directory} holds no image files '
        f'({"/".join(IMAGE_EXTENSIONS)}); set --config.data.folder_dir to a '
        'folder of images.')
  return paths


def _read_image(path: str, image_shape: Sequence[int]) -> np.ndarray:
  """One file as [H, W, C] uint8; ValueError naming the file if it is unusable."""
  height, width, channels = image_shape
  try:
    with Image.open(path) as raw:
      pil = raw.convert(_PIL_MODES[channels])  # convert() decodes the whole file.
  # Decoders raise OSError, SyntaxError, struct.error, zlib.error, ...: whatever
  # it is, the user needs the file's name.
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'Image file {path} cannot be read by PIL ({type(e).__name__}: '
                     f'{e}); delete or replace it.') from None
  if pil.size != (width, height):
    raise DataError(
        f'Image file {path} is {pil.size[1]}x{pil.size[0]} (HxW) but '
        f'config.data.image_shape needs {height}x{width}; folder images are not '
        'resized: resize the files or set --config.data.image_shape.')
  return np.asarray(pil, np.uint8).reshape(height, width, channels)


class _FolderImages:
  """Random-access view of image files yielding [H, W, C] uint8 images.

  Every file is decoded once when the view is built, so a corrupt or
  wrongly sized file stops the run before anything compiles rather than
  hours into training. That costs one pass over the folder (measured ~0.1 ms
  per 28x28 or 64x64 PNG on one CPU core: 10 s for 100k files); images are
  decoded again on access instead of being kept in memory, so large folders
  still fit. Images are never cropped or resized (config.data.centre_crop is
  for tfds): each must already be H x W.
  """

  def __init__(self, paths: Sequence[str], image_shape: Sequence[int]):
    self._paths, self._shape = list(paths), tuple(image_shape)
    if self._shape[-1] not in _PIL_MODES:
      raise ValueError(f'config.data.image_shape={self._shape}: image folders hold '
                       f'grayscale (C=1) or RGB (C=3) images, not C={self._shape[-1]}.')
    for path in self._paths:
      _read_image(path, self._shape)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> np.ndarray:
    return _read_image(self._paths[index], self._shape)


# ----------------------------------------------------------------------------
# Public entry points.
# ----------------------------------------------------------------------------
def get_source(data_cfg, split: str):
  """A random-access sequence of [H, W, C] uint8 images for a split.

  Args:
    data_cfg: config.data (source, name, idx_dir, tfds_data_dir, folder_dir,
      image_shape, train_split / eval_split names, centre_crop).
    split: 'train' or 'eval'.
  """
  split_name = data_cfg.train_split if split == 'train' else data_cfg.eval_split
  if data_cfg.source == 'idx':
    directory = data_folder(data_cfg, 'idx_dir')
    images = load_idx_images(directory, split_name)
    if tuple(images.shape[1:]) != tuple(data_cfg.image_shape):
      raise DataError(
          f'IDX file {os.path.join(directory, IDX_FILES[split_name][0])}[.gz] holds '
          f'{images.shape[1]}x{images.shape[2]} images but config.data.image_shape is '
          f'{tuple(data_cfg.image_shape)}: the idx source reads the 28x28 images of '
          '(Fashion-)MNIST; set --config.data.idx_dir to their folder, or read other '
          'images with --config.data.source=folder.')
    return images
  if data_cfg.source == 'tfds':
    if data_cfg.name not in TFDS_DATASETS:
      raise ValueError(f'config.data.name={data_cfg.name!r}: choose one of '
                       f'{TFDS_DATASETS} for source=tfds.')
    source = _tfds_data_source(data_cfg.name, split_name,
                               data_folder(data_cfg, 'tfds_data_dir'))
    return _TfdsImages(source, data_cfg.image_shape, data_cfg.get('centre_crop', None))
  if data_cfg.source == 'folder':
    folder_dir = data_folder(data_cfg, 'folder_dir')
    if not folder_dir:
      raise ValueError("config.data.source='folder' needs config.data.folder_dir "
                       "(a folder of images); set it, or choose 'idx' or 'tfds'.")
    other = data_cfg.eval_split if split == 'train' else data_cfg.train_split
    paths = folder_image_paths(folder_dir, split_name, other)
    return _FolderImages(paths, data_cfg.image_shape)
  raise ValueError(f"config.data.source={data_cfg.source!r}: choose 'idx' or 'tfds' "
                   "(or 'folder' with config.data.folder_dir).")


def batched_dataset(source, batch_size: int, seed: int, *,
                    shuffle: bool = True, repeat: bool = True,
                    process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """A random-access grain dataset of [batch_size, H, W, C] uint8 batches.

  Each process reads its own interleaved shard of the source; batch_size is
  the per-process batch.
  """
  ds = grain.MapDataset.source(source)
  if process_count > 1:
    ds = ds.slice(slice(process_index, None, process_count))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat()
  return ds.batch(batch_size, drop_remainder=True)


def train_batches(source, batch_size: int, seed: int, start_step: int = 0, *,
                  num_threads: int = 2, prefetch: int = 4,
                  process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
  """Endless iterator of training batches, starting at batch `start_step`."""
  ds = batched_dataset(source, batch_size, seed, process_index=process_index,
                       process_count=process_count)
  ds = ds.slice(slice(start_step, None))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def first_images(source, num: int | None = None) -> np.ndarray:
  """The first `num` images (all for None) of a source, [N, H, W, C] uint8."""
  num = len(source) if num is None else min(num, len(source))
  if isinstance(source, np.ndarray):
    return source[:num]
  return np.stack([source[i] for i in range(num)])


def load_images(data_cfg, split: str, num: int | None = None) -> np.ndarray:
  """The first `num` images (all for None) of one split, [N, H, W, C] uint8.

  Only that split is opened: evaluation images never read the training split.

  Args:
    data_cfg: config.data.
    split: 'train' or 'eval'.
    num: how many images from the start of the split; None for all.
  """
  return first_images(get_source(data_cfg, split), num)


def preprocess(batch: Array) -> Array:
  """uint8 [B, H, W, C] -> float32 in [0, 1]."""
  return batch.astype(jnp.float32) / 255.0
