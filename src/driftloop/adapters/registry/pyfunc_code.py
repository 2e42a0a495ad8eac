"""The MLflow pyfunc of every driftloop model, as MLflow's "models from code": this file is what
``mlflow.pyfunc.log_model(python_model=<this file>)`` stores, instead of a cloudpickled object.

MLflow runs it (``mlflow models serve``, ``mlflow.pyfunc.load_model``): it loads the model's
files (``artifacts/model``, :mod:`driftloop.models.persist`) after checking them against their
manifest, and answers a frame with ``text`` with ``intent`` and ``confidence``. driftloop itself
never goes through it: serving and training read the files directly and check the signature
first (:mod:`driftloop.adapters.registry.trust`). Nothing here is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel


class IntentModel(PythonModel):
    """A frame with ``text`` in, ``intent`` and ``confidence`` out."""

    # MLflow validates predict's type hints; the explicit signature given at logging time is the
    # contract instead.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self.classifier: Any = None

    def load_context(self, context: Any) -> None:
        """Load the model's files (checked against their manifest; no pickle)."""
        from driftloop.models import persist

        self.classifier = persist.load(Path(context.artifacts["model"]))

    # No type hints on purpose: MLflow would infer a signature from them.
    def predict(self, context, model_input, params=None):
        """Intent and confidence for each text of ``model_input`` (a frame with ``text``, or texts)."""
        if isinstance(model_input, pd.DataFrame):
            texts = model_input["text"].astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        preds = self.classifier.predict(texts)
        return pd.DataFrame({"intent": [p.intent for p in preds], "confidence": [p.confidence for p in preds]})


mlflow.models.set_model(IntentModel())
