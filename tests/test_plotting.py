"""Figures use shared, labelled colour scales; long strips wrap into grids."""

import numpy as np

from sosvae_jax import plotting


def test_shared_signed_scale_keeps_sizes_comparable():
  small = np.full((1, 2, 2, 1), 0.1)
  large = np.full((1, 2, 2, 1), -0.4)
  both = np.concatenate([small, large])
  scale = plotting.signed_scale(both)
  assert scale == 0.4
  rgb = plotting.signed(both, scale=scale)
  white, blue = np.array([247, 247, 247]) / 255, np.array([33, 102, 172]) / 255
  np.testing.assert_allclose(rgb[1, 0, 0], blue)  # full colour at -scale
  # +0.1 of 0.4 is a quarter of the way from white to red, not full red.
  red = np.array([178, 24, 43]) / 255
  np.testing.assert_allclose(rgb[0, 0, 0], white + 0.25 * (red - white))
  # Per-image scaling (the old default) would paint both at full colour.
  np.testing.assert_allclose(plotting.signed(both)[0, 0, 0], red)


def test_heat_scale_and_colorbar():
  v = np.array([0.0, 0.5, 1.0, 2.0]).reshape(1, 2, 2, 1)
  rgb = plotting.heat(v, scale=2.0)
  np.testing.assert_allclose(rgb[0, 1, 1], np.array([252, 253, 191]) / 255)
  np.testing.assert_allclose(rgb[0, 0, 0], np.array([0, 0, 4]) / 255)
  bar = plotting.colorbar('variance', 0.0, 2.0, width=120, height=8)
  assert bar.dtype == np.uint8 and bar.shape[0] == 14 and bar.shape[1] > 120


def test_observation_panel_has_colorbars():
  rng = np.random.default_rng(0)
  mean = rng.uniform(size=(3, 8, 8, 1))
  panel = plotting.observation_panel(mean, mean + 0.1, np.full(mean.shape, 0.01))
  grid_only = plotting.grid([plotting.to_rgb(mean)] * 4, ['a'] * 4)
  assert panel.shape[0] > grid_only.shape[0] + 20  # two bars below the rows


def test_wrap_lays_a_strip_out_as_rows():
  images = np.zeros((7, 4, 4, 3))
  rows = plotting.wrap(images, 3)
  assert [r.shape[0] for r in rows] == [3, 3, 3]
  assert np.all(rows[2][1:] == 1.0)  # padding is white
  image = plotting.grid(rows)
  assert image.shape[1] < image.shape[0] * 3
  stacked = plotting.stack([np.zeros((5, 10, 3), np.uint8), np.zeros((3, 4, 3), np.uint8)])
  assert stacked.shape == (10, 10, 3)
