"""The MLflow model wrapper: raw rows in, latents, errors and anomaly flags out.

The one aecore module that imports mlflow. A consumer who loads the registered
model needs aecore (shipped inside the model), torch and pandas, never Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from aecore.export import latent_columns
from aecore.io import file_digest
from aecore.models import load_model
from aecore.normalize import Normalizer
from aecore.scorer import Reference

ARTIFACTS = ("model", "normalizer", "scoring")


class AutoencoderModel(mlflow.pyfunc.PythonModel):
    """Normalize raw rows, encode them and score their reconstruction error."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the weights, the normalizer and the threshold from the model's artifacts."""
        self.model = load_model(Path(context.artifacts["model"]))
        self.normalizer = Normalizer.from_json(Path(context.artifacts["normalizer"]))
        self.normalizer_sha256 = file_digest(Path(context.artifacts["normalizer"]), "sha256")
        self.reference = Reference.read(Path(context.artifacts["scoring"]))

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Score each input row: latents, errors, anomaly score and flag, top features.

        Columns ``z0 … z{k-1}``, ``recon_error``, ``anomaly_score``, ``is_anomaly`` and
        ``top_features``, in the input's row order and index.
        """
        x = self.normalizer.transform(pd.DataFrame(model_input), source="model input")
        columns, _ = latent_columns(self.model, x, self.reference)
        return pd.DataFrame(
            {name: column.to_numpy(zero_copy_only=False) for name, column in columns.items()},
            index=model_input.index,
        )


# MLflow "models from code": the logged model is this file, not a pickle.
mlflow.models.set_model(AutoencoderModel())
