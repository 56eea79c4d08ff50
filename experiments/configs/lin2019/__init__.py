"""Configs of lin2019_balancing_elbo_learned_variance.txt (two-stage variance)."""
