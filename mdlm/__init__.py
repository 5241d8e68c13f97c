"""Benchmark and reproducibility suite for model scheduling in masked diffusion language models."""

__version__ = "0.1.0"
