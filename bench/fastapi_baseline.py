"""The endpoint a user would otherwise write: FastAPI + ONNX Runtime, one image per call, no batching.

    MODEL_PATH=models/digits-resnet18.onnx uvicorn bench.fastapi_baseline:app --port 8000
    DEVICE=cuda MODEL_PATH=... uvicorn bench.fastapi_baseline:app --port 8000    # on the CUDA provider
    curl -F images=@digit.png http://localhost:8000/classify

It does the same work per image as the service (the same decoding, validation and preprocessing, one
session call), so `bench.serve_load` compares the serving stacks, not the image code.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse

from core import metadata
from service.config import Limits
from service.decode import InputError, decode

# a user with a GPU would ask for the CUDA provider, with its defaults
PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"] if os.environ.get("DEVICE") == "cuda" else None
session = ort.InferenceSession(os.environ["MODEL_PATH"], providers=PROVIDERS or ["CPUExecutionProvider"])
META = metadata.decode(session.get_modelmeta().custom_metadata_map)
PREPROCESS = metadata.preprocess_of(META)
LIMITS = Limits()
app = FastAPI()


@app.post("/classify")
def classify(images: UploadFile) -> JSONResponse:  # a plain def: FastAPI runs it in its thread pool
    try:
        pixels = decode(images.file.read(), 0, LIMITS, PREPROCESS)
    except InputError as e:
        return JSONResponse({"error": e.message}, status_code=e.status)
    probs = session.run(["probabilities"], {"images": pixels[None]})[0][0]
    best = int(np.argmax(probs))
    return JSONResponse([{"label": META["labels"][best], "index": best, "probability": float(probs[best])}])
