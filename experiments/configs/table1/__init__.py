"""Table 1 of sosvae_tmlr2022.txt: beta-VAE vs Dorta et al. vs SOS-VAE."""
