"""The MLflow model: an open_clip ``local-dir`` checkpoint that embeds texts and images.

MLflow loads this file as "model from code" (``mlflow.pyfunc.log_model(python_model=<this file>)``),
so nothing is pickled: the model is this code, the checkpoint folder (config JSON + safetensors) and a
copy of the ``tasks`` package. Logging it is ``tasks.tracking.log_clip_model``.

Input: a DataFrame with a ``text`` column and/or an ``image`` column (base64 of a JPEG/PNG/... file);
each row holds exactly one of the two. Output: float32 [rows, embed_dim], L2-normalised, one
embedding per row: the text's or the image's. Images go through the project's own loader and
pad-to-square geometry (``tasks.images``), exactly as in training.
"""

import base64
import binascii

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model

from tasks.core import models
from tasks.core.errors import UserError
from tasks.core.images import load_image, prepare_image

TEXT, IMAGE = "text", "image"


def _present(value) -> bool:
    return not pd.isna(value) and value != ""


class ClipEmbedder(mlflow.pyfunc.PythonModel):
    """Stateless until ``load_context``: everything it needs is the ``checkpoint`` artefact."""

    def load_context(self, context):
        self.clip = models.load_checkpoint(context.artifacts["checkpoint"])
        self.clip.model.eval()

    # (the pandas annotation tells MLflow to check inputs against the logged signature only)
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        columns = [c for c in (TEXT, IMAGE) if c in model_input.columns]
        if not columns:
            raise UserError(f"model input: expected a '{TEXT}' or '{IMAGE}' column, "
                                  f"got {list(model_input.columns)}")
        texts, images = {}, {}
        for row, values in enumerate(model_input[columns].itertuples(index=False)):
            cells = dict(zip(columns, values))
            has_text, has_image = _present(cells.get(TEXT)), _present(cells.get(IMAGE))
            if has_text == has_image:
                raise UserError(f"model input row {row}: expected exactly one of '{TEXT}' and "
                                      f"'{IMAGE}', got {'both' if has_text else 'neither'}")
            if has_text:
                texts[row] = str(cells[TEXT])
            else:
                images[row] = self._decode(row, cells[IMAGE])
        out = np.zeros((len(model_input), self.clip.model_cfg["embed_dim"]), dtype=np.float32)
        if texts:
            out[list(texts)] = models.encode_texts(self.clip, list(texts.values())).numpy()
        if images:
            batch = torch.from_numpy(np.stack(list(images.values())))
            out[list(images)] = models.encode_images(self.clip, batch).numpy()
        return out

    def _decode(self, row: int, encoded) -> np.ndarray:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise UserError(f"model input row {row}: field '{IMAGE}' is not base64 ({exc})") from None
        return prepare_image(load_image(data, label=f"model input row {row}"), self.clip.image_size)


set_model(ClipEmbedder())
