"""Inception-v3 as used for FID (pool3, 2048 features), in flax.linen.

This is the network of the original TensorFlow FID code (Heusel et al. 2017,
graph 'inception-2015-12-05') in the form pytorch-fid (Seitzer 2020) ports it,
the feature network behind the FID numbers of sosvae_tmlr2022.txt Table 1.
It differs from torchvision's Inception-v3 in three places, all reproduced
here: the average pools of the A, C and first E blocks do not count padding,
the last E block max-pools its pool branch, and the 1008-way classifier is
unused (features are the 2048-d global average pool, 'pool3').

Input handling as pytorch-fid: images [N, H, W, C] in [0, 1] (grayscale is
repeated to RGB), resized bilinearly to 299 x 299 with half-pixel centres
(torch `align_corners=False`, no antialiasing) and scaled to [-1, 1].

Weights. Nothing is downloaded at run time. The user supplies the public
pytorch-fid weights file

  pt_inception-2015-12-05-6726825d.pth
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

(about 91 MB; by torch.hub's naming convention '6726825d' is the start of
the file's SHA-256: `sha256sum` should print a hash beginning with it; the
full hash is not published and could not be checked from this offline
machine), converts it once on any machine with torch:

  python scripts/convert_inception_weights.py \
      --input=pt_inception-2015-12-05-6726825d.pth --output=inception_fid.npz

and passes the .npz
(`--config.evaluation.inception_weights=inception_fid.npz`). The .npz
holds one array per flax variable under the key '<collection>/<module
path>/<name>', e.g. 'params/Mixed_5b/branch1x1/conv/kernel' (HWIO) or
'batch_stats/Conv2d_1a_3x3/bn/mean', plus 'format' = FORMAT.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
FORMAT = 'sosvae_jax-inception-fid-v1'
FEATURE_DIM = 2048
INPUT_SIZE = 299
PYTORCH_FID_FILE = 'pt_inception-2015-12-05-6726825d.pth'
PYTORCH_FID_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                   'fid_weights/' + PYTORCH_FID_FILE)
_BN_EPSILON = 1e-3  # the TF graph's batch-norm epsilon, kept by pytorch-fid


class BasicConv2d(nn.Module):
  """Convolution without bias, batch norm (inference), ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pad = tuple((p, p) for p in self.padding)
    x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=pad,
                use_bias=False, precision=jax.lax.Precision.HIGHEST, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPSILON, name='bn')(x)
    return nn.relu(x)


def _avg_pool_exclude_pad(x: Array) -> Array:
  """3x3, stride 1, padding 1 average that divides by the in-image count only."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool(x: Array, stride: int, pad: int = 0) -> Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """35 x 35 block: 1x1, 5x5, double 3x3 and pool branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = BasicConv2d(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv2d(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name='branch_pool')(
        _avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv2d(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = BasicConv2d(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """17 x 17 block with factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv2d(c7, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv2d(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv2d(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """8 x 8 block with split 1x3 / 3x1 branches; `max_pool` for the last one."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = BasicConv2d(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv2d(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], -1)
    bd = BasicConv2d(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], -1)
    pooled = _max_pool(x, 1, pad=1) if self.max_pool else _avg_pool_exclude_pad(x)
    bp = BasicConv2d(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
  """[N, 299, 299, 3] in [-1, 1] -> pool3 features [N, 2048]."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = BasicConv2d(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)  # 149
    x = BasicConv2d(32, (3, 3), name='Conv2d_2a_3x3')(x)  # 147
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool(x, 2)  # 73
    x = BasicConv2d(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, (3, 3), name='Conv2d_4a_3x3')(x)  # 71
    x = _max_pool(x, 2)  # 35
    x = InceptionA(32, name='Mixed_5b')(x)  # 256 channels
    x = InceptionA(64, name='Mixed_5c')(x)  # 288
    x = InceptionA(64, name='Mixed_5d')(x)  # 288
    x = InceptionB(name='Mixed_6a')(x)  # 17 x 17 x 768
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)  # 8 x 8 x 1280
    x = InceptionE(name='Mixed_7b')(x)  # 2048
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))  # (N, 2048)


def preprocess_for_inception(images: Array) -> Array:
  """[N, H, W, C] in [0, 1], C in {1, 3} -> [N, 299, 299, 3] in [-1, 1]."""
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'Inception FID takes images [N, H, W, 1 or 3], got {images.shape}')
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  n = images.shape[0]
  images = jax.image.resize(images, (n, INPUT_SIZE, INPUT_SIZE, 3), 'bilinear',
                            antialias=False)
  return 2.0 * images - 1.0


# ------------------------------------------------------------- weights ----


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """{'params/.../kernel': shape, 'batch_stats/.../mean': shape, ...}."""
  abstract = jax.eval_shape(
      InceptionV3FID().init, jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract), sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


# flax leaf name -> (torch leaf name, layout change).
_LEAF_MAP = {
    ('params', 'conv', 'kernel'): 'conv.weight',
    ('params', 'bn', 'scale'): 'bn.weight',
    ('params', 'bn', 'bias'): 'bn.bias',
    ('batch_stats', 'bn', 'mean'): 'bn.running_mean',
    ('batch_stats', 'bn', 'var'): 'bn.running_var',
}
# Entries of the pytorch-fid state dict that the pool3 features do not use.
_UNUSED_PREFIXES = ('fc.', 'AuxLogits.')
_UNUSED_SUFFIXES = ('num_batches_tracked',)


def torch_name(flax_key: str) -> str:
  """'params/Mixed_5b/branch1x1/conv/kernel' -> 'Mixed_5b.branch1x1.conv.weight'."""
  collection, *path, layer, leaf = flax_key.split('/')
  return '.'.join(path + [_LEAF_MAP[(collection, layer, leaf)]])


def convert_pytorch_fid_state_dict(
    state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The pytorch-fid FIDInceptionA..E state dict as this module's .npz arrays.

  Conv weights go from torch's [O, I, kh, kw] to flax's [kh, kw, I, O];
  batch-norm weight/bias/running statistics keep their shape.

  Args:
    state_dict: torch parameter name -> array (numpy or torch tensor).

  Returns:
    {'params/...': float32 array, 'batch_stats/...': ..., 'format': FORMAT}.

  Raises:
    ValueError: a parameter is missing, has the wrong shape, or the dict holds
      names this network does not know (naming each).
  """
  arrays = {k: np.asarray(getattr(v, 'numpy', lambda v=v: v)(), np.float32)
            for k, v in state_dict.items()}
  out, missing, wrong = {}, [], []
  used = set()
  for key, shape in expected_shapes().items():
    name = torch_name(key)
    if name not in arrays:
      missing.append(name)
      continue
    value = arrays[name]
    used.add(name)
    if key.endswith('/kernel'):
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    if value.shape != shape:
      wrong.append(f'{name} {arrays[name].shape} (expected {shape} after conversion)')
      continue
    out[key] = value
  unknown = sorted(k for k in arrays if k not in used
                   and not k.startswith(_UNUSED_PREFIXES)
                   and not k.endswith(_UNUSED_SUFFIXES))
  problems = []
  if missing:
    problems.append(f'{len(missing)} parameters missing, e.g. {missing[:3]}')
  if wrong:
    problems.append(f'{len(wrong)} with the wrong shape, e.g. {wrong[:3]}')
  if unknown:
    problems.append(f'{len(unknown)} unknown names, e.g. {unknown[:3]}')
  if problems:
    raise ValueError(
        'This is not the pytorch-fid Inception state dict: ' + '; '.join(problems)
        + f'. Convert the file {PYTORCH_FID_FILE} ({PYTORCH_FID_URL}).')
  out['format'] = np.asarray(FORMAT)
  return out


def load_inception_weights(path: str) -> dict[str, Any]:
  """Flax variables {'params': ..., 'batch_stats': ...} from a converted .npz.

  Raises:
    FileNotFoundError: no file at `path` (says how to make one).
    ValueError: the file is not a converted Inception FID .npz, or its
      arrays do not fit the network (naming the first few that do not).
  """
  path = os.path.expanduser(path)
  how = (f'Download {PYTORCH_FID_URL} and convert it with `python '
         'scripts/convert_inception_weights.py --input=' + PYTORCH_FID_FILE
         + ' --output=inception_fid.npz` (needs torch once).')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Inception weights file {path} does not exist. {how}')
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path} is not a readable .npz file ({type(e).__name__}: '
                     f'{e}). {how}') from None
  if str(arrays.pop('format', '')) != FORMAT:
    raise ValueError(f'{path} is not a converted Inception FID file (no '
                     f"'format' = {FORMAT!r} entry); is it the raw .pth? {how}")
  expected = expected_shapes()
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  wrong = sorted(k for k in set(expected) & set(arrays)
                 if tuple(arrays[k].shape) != expected[k])
  if missing or extra or wrong:
    details = [f'{name}: {keys[:3]}' for name, keys in
               (('missing', missing), ('unexpected', extra), ('wrong shape', wrong))
               if keys]
    raise ValueError(f'{path} does not fit the Inception FID network '
                     f'({"; ".join(details)}). {how}')
  nested = flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): jnp.asarray(v, jnp.float32) for k, v in arrays.items()})
  return nested


def feature_fn(variables: Mapping[str, Any]) -> Callable[[Array], np.ndarray]:
  """images [N, H, W, C] in [0, 1] -> pool3 features [N, 2048] (numpy).

  The network is compiled once per distinct N (keep chunks one size).
  """
  model = InceptionV3FID()
  apply = jax.jit(lambda v, x: model.apply(v, preprocess_for_inception(x)))
  return lambda images: np.asarray(apply(variables, images))
