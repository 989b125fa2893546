"""Differential privacy (DP-SGD through Opacus)."""
