"""Observation distributions: pure maths, no flax and no config."""
