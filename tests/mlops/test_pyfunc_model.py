"""The MLflow pyfunc model (tasks/mlops/pyfunc_model.py) as a client calls it: one row is a text or an
image, never both, and a bad row is named."""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image


def test_pyfunc_input_rows_need_exactly_one_of_text_and_image(tracked):
    model = mlflow.pyfunc.load_model(f"models:/{tracked.summary['mlflow_model_id']}")
    with pytest.raises(Exception, match="row 0: expected exactly one"):
        model.predict(pd.DataFrame({"text": ["a white car"], "image": ["aGVsbG8="]}))
    with pytest.raises(Exception, match="row 0: field 'image' is not base64"):
        model.predict(pd.DataFrame({"image": ["not base64!"]}))
    with pytest.raises(Exception, match="model input row 0: field 'image': cannot decode image: cannot identify image file model input row 0"):
        model.predict(pd.DataFrame({"image": ["aGVsbG8="]}))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, format="JPEG")
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}))
    assert out.shape == (1, 128) and out.dtype == np.float32
