"""aecore: the autoencoder pipeline's library of pure stage functions (no orchestration)."""

__version__ = "0.1.0"
