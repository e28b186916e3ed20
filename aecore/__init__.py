"""aecore: the autoencoder pipeline's library of pure stage functions (no orchestration).

The public names below load on first use, so ``import aecore`` stays instant (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "AepipeError": "aecore.errors",
    "AnomalyScorer": "aecore.scorer",
    "FusedScorer": "aecore.scorer",
    "Layout": "aecore.layout",
    "Normalizer": "aecore.normalize",
    "Params": "aecore.config",
    "Reference": "aecore.scorer",
    "STAGES": "aecore.pipeline",
    "encode_and_reconstruct": "aecore.models",
    "load_model": "aecore.models",
    "model_outputs": "aecore.models",
    "load_params": "aecore.config",
    "read_latents": "aecore.export",
    "read_metadata": "aecore.export",
    "resolve_params": "aecore.config",
    "run_stage": "aecore.pipeline",
    "score_batch": "aecore.score",
}
__all__ = [
    "STAGES",
    "AepipeError",
    "AnomalyScorer",
    "FusedScorer",
    "Layout",
    "Normalizer",
    "Params",
    "Reference",
    "encode_and_reconstruct",
    "load_model",
    "load_params",
    "model_outputs",
    "read_latents",
    "read_metadata",
    "resolve_params",
    "run_stage",
    "score_batch",
]

if TYPE_CHECKING:
    from aecore.config import Params, load_params, resolve_params
    from aecore.errors import AepipeError
    from aecore.export import read_latents, read_metadata
    from aecore.layout import Layout
    from aecore.models import encode_and_reconstruct, load_model, model_outputs
    from aecore.normalize import Normalizer
    from aecore.pipeline import STAGES, run_stage
    from aecore.score import score_batch
    from aecore.scorer import AnomalyScorer, FusedScorer, Reference


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        message = f"module 'aecore' has no attribute {name!r}"
        raise AttributeError(message)
    return getattr(importlib.import_module(_PUBLIC[name]), name)
