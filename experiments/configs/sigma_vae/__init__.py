"""Configs of rybkin2021_sigma_vae_calibrated_decoders.txt Table 2: one per decoder row."""
