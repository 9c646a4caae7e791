"""The plain BentoML service a user would write from BentoML's documentation: one batchable API.

    MODEL_PATH=models/digits-resnet18.onnx bentoml serve bench.bentoml_baseline:Baseline --port 8002
    DEVICE=cuda MODEL_PATH=... bentoml serve bench.bentoml_baseline:Baseline --port 8002   # CUDA provider
    curl -F images=@digit.png http://localhost:8002/classify

`@bentoml.api(batchable=True)` with a list of images as its one argument: BentoML's dispatcher joins the lists
of concurrent requests into one call (batch_dim 0) and splits the returned list back. Each image arrives as a
`Path` (BentoML writes the upload to a temporary file, as its docs show for file input); the method reads it and
decodes it with the service's own decoding, validation and preprocessing (as bench/fastapi_baseline.py does),
then runs one ONNX Runtime call on the batch. Everything else is BentoML's default (one worker, one thread for
the API, tracing and access log as configured out of the box), so `bench.request_cpu` compares the serving
stacks, not the image code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort

from core import metadata
from service.config import Limits
from service.decode import decode

# the service's shedding bound in bench/serve_load.py's serving.yaml: no request is refused for waiting
MAX_LATENCY_MS = 60000


@bentoml.service(name="baseline")
class Baseline:
    def __init__(self) -> None:
        # a user with a GPU would ask for the CUDA provider, with its defaults
        cuda = os.environ.get("DEVICE") == "cuda"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(os.environ["MODEL_PATH"], providers=providers)
        self.meta = metadata.decode(self.session.get_modelmeta().custom_metadata_map)
        self.preprocess = metadata.preprocess_of(self.meta)
        self.limits = Limits()

    @bentoml.api(route="/classify", batchable=True, max_batch_size=64, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, images: list[Path]) -> list[dict[str, Any]]:
        """Classify each image; concurrent requests' images arrive here as one list."""
        pixels = np.stack([decode(path.read_bytes(), i, self.limits, self.preprocess) for i, path in enumerate(images)])
        probs = self.session.run(["probabilities"], {"images": pixels})[0]
        out = []
        for p in probs:
            best = int(np.argmax(p))
            out.append({"label": self.meta["labels"][best], "index": best, "probability": float(p[best])})
        return out
