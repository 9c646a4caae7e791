"""The second endpoint a user might pick instead of the service: LitServe with its own batching.

    MODEL_PATH=models/digits-resnet18.onnx python -m bench.litserve_baseline --port 8001
    curl -F images=@digit.png http://localhost:8001/classify

Written as LitServe's documentation shows (LitAPI with setup / decode_request / predict / encode_response,
`max_batch_size` and `batch_timeout` on the API): the upload is decoded in `decode_request` with the
service's own decoding and preprocessing, and `predict` runs one ONNX Runtime call on the batch. So
`bench.serve_load` compares the serving stacks, not the image code.
"""

from __future__ import annotations

import argparse
import os

import litserve as ls
import numpy as np
import onnxruntime as ort

from core import metadata
from service.config import Limits
from service.decode import decode


class Classifier(ls.LitAPI):
    def setup(self, device: str) -> None:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        self.session = ort.InferenceSession(os.environ["MODEL_PATH"], providers=providers or ["CPUExecutionProvider"])
        self.meta = metadata.decode(self.session.get_modelmeta().custom_metadata_map)
        self.preprocess = metadata.preprocess_of(self.meta)
        self.limits = Limits()

    def decode_request(self, request) -> np.ndarray:
        return decode(request["images"].file.read(), 0, self.limits, self.preprocess)

    def predict(self, pixels: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(["probabilities"], {"images": pixels})[0])

    def encode_response(self, probs: np.ndarray) -> list[dict]:
        best = int(np.argmax(probs))
        return [{"label": self.meta["labels"][best], "index": best, "probability": float(probs[best])}]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.litserve_baseline", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.01, help="seconds LitServe waits to fill a batch")
    args = p.parse_args()
    api = Classifier(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, api_path="/classify")
    server = ls.LitServer(api, accelerator=args.device)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
