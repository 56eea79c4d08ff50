"""Sweep definitions: each file's get_sweep() returns a list of config overrides."""
