"""Student-t VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: a Student-t per subpixel with learned location, log-scale (soft-
clipped at -6) and one learned df (Takahashi et al. 2018).
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/student_t.py \
      --workdir=runs/sigma_vae/student_t

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < -3659 nats, FID 70.4.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='student_t', min_log_sigma=-6.0), arg)
