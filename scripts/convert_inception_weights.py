"""Converts the pytorch-fid Inception weights (.pth) into sosvae_jax's .npz.

  python scripts/convert_inception_weights.py \
      --input=pt_inception-2015-12-05-6726825d.pth --output=inception_fid.npz

The input is the public file of pytorch-fid (Seitzer 2020):
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
'6726825d' is the leading hex of its SHA-256 (check with `sha256sum`). It is
a torch state dict, so reading it needs torch (`pip install torch`, CPU build
is enough; only this script uses it). A state dict already saved as .npz
(torch name -> array, e.g. by `np.savez(path, **{k: v.numpy() ...})`) is read
without torch. Then evaluate with
`--config.evaluation.inception_weights=inception_fid.npz`.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli  # pylint: disable=g-import-not-at-top
from sosvae_jax.evaluation import inception  # pylint: disable=g-import-not-at-top

_INPUT = cli.DEFINE_path('input', None, f'{inception.PYTORCH_FID_FILE} (or a '
                         'state dict saved as .npz).')
_OUTPUT = cli.DEFINE_path('output', None, 'Where to write the converted .npz.')
flags.mark_flags_as_required(['input', 'output'])


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """torch name -> numpy array, from a .pth (needs torch) or a .npz."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; download '
                            f'{inception.PYTORCH_FID_URL}')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit(
        f'Reading {path} needs torch, which is not installed. Install it '
        '(`pip install torch`, the CPU build is enough) on any machine, run '
        'this script there, and copy the .npz back; torch is needed only for '
        'this conversion.') from None
  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert(input_path: str, output_path: str) -> str:
  """Reads, converts, checks and writes; returns the output path."""
  arrays = inception.convert_pytorch_fid_state_dict(read_state_dict(input_path))
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  np.savez(output_path, **arrays)
  written = output_path if output_path.endswith('.npz') else output_path + '.npz'
  inception.load_inception_weights(written)  # fails loudly if anything is off
  return written


def main(argv):
  del argv
  written = convert(_INPUT.value, _OUTPUT.value)
  print(f'Wrote {written}: {len(np.load(written).files) - 1} arrays of the '
        'Inception FID network.')


if __name__ == '__main__':
  app.run(main)
