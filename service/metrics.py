"""The service's own Prometheus metrics, served at /metrics beside BentoML's.

Made with prometheus_client itself (bentoml.metrics, a deferred alias of it, is deprecated). They must be made in the
worker once BentoML has set PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads when it is first imported: this
module is imported with the service, in the worker, as bentoml.metrics' first use was (tests/test_service.py reads
the batch histogram from a served /metrics).
"""

from __future__ import annotations

import prometheus_client

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_IMAGES = prometheus_client.Histogram(
    name="inference_batch_images",
    documentation="Images of requests in one ONNX Runtime call, per model (padding not counted)",
    labelnames=["model"],
    buckets=BATCH_BUCKETS,
)
BATCH_RUN_IMAGES = prometheus_client.Histogram(
    name="inference_batch_run_images",
    documentation="Images one ONNX Runtime call ran, per model: the real ones plus the padding up to a fixed size",
    labelnames=["model"],
    buckets=BATCH_BUCKETS,
)
WARMUP_SECONDS = prometheus_client.Gauge(
    name="session_warmup_seconds",
    documentation="Seconds the start-up call at each fixed batch size took, per model (made before /readyz)",
    labelnames=["model", "batch_size"],
)
INFERENCE_SECONDS = prometheus_client.Histogram(
    name="inference_seconds",
    documentation="Seconds of one ONNX Runtime call, per model",
    labelnames=["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REQUESTS = prometheus_client.Counter(
    name="model_requests", documentation="Classification requests per model or ensemble", labelnames=["model"]
)
