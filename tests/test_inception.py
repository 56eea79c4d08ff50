"""Inception-v3 FID network: pytorch-fid name mapping, layouts, loading errors."""

import subprocess
import sys
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from sosvae_jax.evaluation import features
from sosvae_jax.evaluation import inception

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pytorch_fid_convs():
  """(torch module name, in, out, kh, kw) of every conv of pytorch-fid's FIDInceptionV3.

  Written out from the pytorch-fid architecture, independently of the flax
  module, so that a wrong name or shape in the converter shows up here.
  """
  convs = [('Conv2d_1a_3x3', 3, 32, 3, 3), ('Conv2d_2a_3x3', 32, 32, 3, 3),
           ('Conv2d_2b_3x3', 32, 64, 3, 3), ('Conv2d_3b_1x1', 64, 80, 1, 1),
           ('Conv2d_4a_3x3', 80, 192, 3, 3)]
  def block_a(name, cin, pool):
    return [(f'{name}.branch1x1', cin, 64, 1, 1), (f'{name}.branch5x5_1', cin, 48, 1, 1),
            (f'{name}.branch5x5_2', 48, 64, 5, 5), (f'{name}.branch3x3dbl_1', cin, 64, 1, 1),
            (f'{name}.branch3x3dbl_2', 64, 96, 3, 3), (f'{name}.branch3x3dbl_3', 96, 96, 3, 3),
            (f'{name}.branch_pool', cin, pool, 1, 1)]
  def block_c(name, c7):
    return [(f'{name}.branch1x1', 768, 192, 1, 1), (f'{name}.branch7x7_1', 768, c7, 1, 1),
            (f'{name}.branch7x7_2', c7, c7, 1, 7), (f'{name}.branch7x7_3', c7, 192, 7, 1),
            (f'{name}.branch7x7dbl_1', 768, c7, 1, 1), (f'{name}.branch7x7dbl_2', c7, c7, 7, 1),
            (f'{name}.branch7x7dbl_3', c7, c7, 1, 7), (f'{name}.branch7x7dbl_4', c7, c7, 7, 1),
            (f'{name}.branch7x7dbl_5', c7, 192, 1, 7), (f'{name}.branch_pool', 768, 192, 1, 1)]
  def block_e(name, cin):
    return [(f'{name}.branch1x1', cin, 320, 1, 1), (f'{name}.branch3x3_1', cin, 384, 1, 1),
            (f'{name}.branch3x3_2a', 384, 384, 1, 3), (f'{name}.branch3x3_2b', 384, 384, 3, 1),
            (f'{name}.branch3x3dbl_1', cin, 448, 1, 1), (f'{name}.branch3x3dbl_2', 448, 384, 3, 3),
            (f'{name}.branch3x3dbl_3a', 384, 384, 1, 3), (f'{name}.branch3x3dbl_3b', 384, 384, 3, 1),
            (f'{name}.branch_pool', cin, 192, 1, 1)]
  convs += block_a('Mixed_5b', 192, 32) + block_a('Mixed_5c', 256, 64) + block_a('Mixed_5d', 288, 64)
  convs += [('Mixed_6a.branch3x3', 288, 384, 3, 3), ('Mixed_6a.branch3x3dbl_1', 288, 64, 1, 1),
            ('Mixed_6a.branch3x3dbl_2', 64, 96, 3, 3), ('Mixed_6a.branch3x3dbl_3', 96, 96, 3, 3)]
  convs += block_c('Mixed_6b', 128) + block_c('Mixed_6c', 160) + block_c('Mixed_6d', 160)
  convs += block_c('Mixed_6e', 192)
  convs += [('Mixed_7a.branch3x3_1', 768, 192, 1, 1), ('Mixed_7a.branch3x3_2', 192, 320, 3, 3),
            ('Mixed_7a.branch7x7x3_1', 768, 192, 1, 1), ('Mixed_7a.branch7x7x3_2', 192, 192, 1, 7),
            ('Mixed_7a.branch7x7x3_3', 192, 192, 7, 1), ('Mixed_7a.branch7x7x3_4', 192, 192, 3, 3)]
  return convs + block_e('Mixed_7b', 1280) + block_e('Mixed_7c', 2048)


def _synthetic_state_dict(seed=0):
  """A pytorch-fid-shaped state dict with random values (He-scaled convs)."""
  rng = np.random.default_rng(seed)
  state = {'fc.weight': rng.normal(size=(1008, 2048)).astype(np.float32),
           'fc.bias': np.zeros(1008, np.float32)}
  for name, cin, cout, kh, kw in _pytorch_fid_convs():
    state[f'{name}.conv.weight'] = (rng.normal(size=(cout, cin, kh, kw))
                                    * np.sqrt(2.0 / (cin * kh * kw))).astype(np.float32)
    state[f'{name}.bn.weight'] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    state[f'{name}.bn.bias'] = rng.normal(scale=0.1, size=cout).astype(np.float32)
    state[f'{name}.bn.running_mean'] = rng.normal(scale=0.1, size=cout).astype(np.float32)
    state[f'{name}.bn.running_var'] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
    state[f'{name}.bn.num_batches_tracked'] = np.array(0, np.int64)
  return state


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The synthetic state dict saved as .npz, converted by the script, paths and dict."""
  folder = tmp_path_factory.mktemp('inception')
  state = _synthetic_state_dict()
  np.savez(folder / 'state_dict.npz', **state)
  result = subprocess.run(
      [sys.executable, 'scripts/convert_inception_weights.py',
       f'--input={folder / "state_dict.npz"}', f'--output={folder / "fid.npz"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return folder, state


@pytest.mark.slow
def test_converter_maps_every_pytorch_fid_name(converted):
  folder, state = converted
  assert len(_pytorch_fid_convs()) == 94
  variables = inception.load_inception_weights(str(folder / 'fid.npz'))
  kernel = np.asarray(variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel'])
  torch_weight = state['Mixed_6b.branch7x7_2.conv.weight']  # (O, I, 1, 7)
  assert kernel.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(kernel[0, 5, 3, 17], torch_weight[17, 3, 0, 5])
  np.testing.assert_array_equal(
      variables['batch_stats']['Mixed_7c']['branch_pool']['bn']['var'],
      state['Mixed_7c.branch_pool.bn.running_var'])


def _torch_basic_conv_reference(x, weight, gamma, beta, mean, var, stride):
  """float64 BasicConv2d of torch layout: x [H, W, I], weight [O, I, kh, kw], valid padding."""
  _, _, kh, kw = weight.shape
  out_h = (x.shape[0] - kh) // stride + 1
  out_w = (x.shape[1] - kw) // stride + 1
  out = np.zeros((out_h, out_w, weight.shape[0]))
  for i in range(out_h):
    for j in range(out_w):
      patch = x[i * stride:i * stride + kh, j * stride:j * stride + kw]  # (kh, kw, I)
      out[i, j] = np.einsum('hwi,oihw->o', patch, weight)
  out = (out - mean) / np.sqrt(var + 1e-3) * gamma + beta
  return np.maximum(out, 0.0)


def test_first_layer_matches_torch_layout_reference(converted):
  folder, state = converted
  variables = inception.load_inception_weights(str(folder / 'fid.npz'))
  x = np.random.default_rng(1).uniform(-1, 1, (1, 11, 9, 3))
  layer = {c: {'Conv2d_1a_3x3': variables[c]['Conv2d_1a_3x3']} for c in variables}
  got = inception.BasicConv2d(32, (3, 3), strides=2).apply(
      {c: layer[c]['Conv2d_1a_3x3'] for c in layer}, jnp.asarray(x, jnp.float32))
  pre = 'Conv2d_1a_3x3.'
  expected = _torch_basic_conv_reference(
      x[0], state[pre + 'conv.weight'].astype(np.float64), state[pre + 'bn.weight'],
      state[pre + 'bn.bias'], state[pre + 'bn.running_mean'], state[pre + 'bn.running_var'], 2)
  np.testing.assert_allclose(np.asarray(got[0]), expected, rtol=1e-5, atol=1e-5)


def test_resize_is_torch_bilinear_half_pixel():
  """28 -> 299 upsampling against a float64 align_corners=False reference."""
  img = np.random.default_rng(2).random((1, 28, 28, 1))
  got = np.asarray(inception.preprocess_for_inception(img))
  src = np.clip((np.arange(299) + 0.5) * 28 / 299 - 0.5, 0, None)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, 27)
  frac = src - lo
  rows = img[0, lo, :, 0] * (1 - frac)[:, None] + img[0, hi, :, 0] * frac[:, None]
  expected = rows[:, lo] * (1 - frac)[None] + rows[:, hi] * frac[None]
  assert got.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(got[0, :, :, 1], 2 * expected - 1, atol=1e-5)  # float32 weights


@pytest.mark.slow
def test_features_shape_and_chunking(converted):
  folder, _ = converted
  fn = inception.feature_fn(inception.load_inception_weights(str(folder / 'fid.npz')))
  images = np.random.default_rng(3).random((3, 28, 28, 1)).astype(np.float32)
  chunks = features.features_in_chunks(fn, images, chunk_size=2)
  feats = np.concatenate(chunks)
  assert feats.shape == (3, inception.FEATURE_DIM)
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # ReLU then mean
  assert np.std(feats[:, :64], axis=0).max() > 0  # images give different features
  # The padded last chunk gives the same features as a full chunk.
  np.testing.assert_allclose(feats[2:], fn(images[1:])[1:], rtol=1e-4, atol=1e-6)


def test_missing_and_mismatched_files_are_explained(converted, tmp_path):
  folder, state = converted
  with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05'):
    inception.load_inception_weights(str(tmp_path / 'nope.npz'))
  np.savez(tmp_path / 'raw.npz', **state)  # the state dict, not converted
  with pytest.raises(ValueError, match='format'):
    inception.load_inception_weights(str(tmp_path / 'raw.npz'))
  with np.load(folder / 'fid.npz') as data:
    arrays = {k: data[k] for k in data.files}
  arrays['params/Mixed_5b/branch1x1/conv/kernel'] = np.zeros((1, 1, 192, 65), np.float32)
  del arrays['batch_stats/Mixed_7c/branch_pool/bn/mean']
  np.savez(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(ValueError, match='wrong shape.*Mixed_5b') as info:
    inception.load_inception_weights(str(tmp_path / 'bad.npz'))
  assert 'missing' in str(info.value) and 'Mixed_7c/branch_pool/bn/mean' in str(info.value)
  (tmp_path / 'junk.npz').write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a readable .npz'):
    inception.load_inception_weights(str(tmp_path / 'junk.npz'))
  broken = dict(state)
  del broken['Mixed_6e.branch7x7dbl_3.conv.weight']
  broken['Mixed_6e.branch_pool.bn.weight'] = np.ones(7, np.float32)
  broken['Mixed_8a.conv.weight'] = np.ones(3, np.float32)
  with pytest.raises(ValueError, match='1 parameters missing') as info:
    inception.convert_pytorch_fid_state_dict(broken)
  message = str(info.value)
  assert 'Mixed_6e.branch7x7dbl_3.conv.weight' in message
  assert 'Mixed_6e.branch_pool.bn.weight' in message and 'Mixed_8a.conv.weight' in message
