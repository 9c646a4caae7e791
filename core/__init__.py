"""The torch-free core that every stage shares: what an image file decodes to, the eval geometry that
turns it into a model's pixels, what an exported graph says about itself, how an ensemble votes, which
ONNX Runtime provider runs here, the error a user can fix, and how a config file's mistakes read.

The stairs run one way: `service` -> `core`; `export` -> `training` -> `core`. Nothing here imports
torch, `training`, `export` or `service` (tests/test_layering.py checks it), so the Bento packs `core/`
and `service/` whole and carries no torch.
"""
