"""The serving resize + centre crop (core/preprocess.py, `prepare`) as two matrix products, equal to Pillow bit for bit.

    plan = resample.plan(500, 375, {"resize_size": 256, "crop_size": 224, "interpolation": "bilinear"})
    pixels = resample.apply(plan, np.asarray(rgb_image))      # uint8 [224, 224, 3], == prepare(rgb_image, ...)

Pillow's 8-bit antialiased resize (src/libImaging/Resample.c of Pillow 13.0.0, read from its sdist) is separable:
one pass along each axis, each output sample a weighted sum of a window of input samples, in fixed point:

- the weights of output sample i are filter((x - centre_i + 0.5) / filterscale) for the input samples x within
  support * filterscale of centre_i = (i + 0.5) * scale, where scale = in / out and filterscale = max(scale, 1)
  (the filter widens when shrinking, which is the antialiasing); support is 1 (bilinear) or 2 (bicubic, a = -0.5);
  the window is [int(centre - support + 0.5), int(centre + support + 0.5)) clipped to the image;
- each output's weights are divided by their sum (added in order), then made integers: w * 2**22 rounded half away
  from zero (PRECISION_BITS = 22);
- sum = 2**21 + the integer products; the sample is sum >> 22 (a floor) clipped to 0..255: each pass rounds and
  clips to uint8, so the order of the passes matters. Pillow 13.0 (`ImagingResampleInner`) runs the vertical pass
  first when the height loses more than twice the pixels the width loses, (H - h) > 2 (W - w) with H > h, and the
  horizontal pass first otherwise (Pillow 12 always ran it first); an axis whose size does not change has no pass.
  Restricting the first pass to the samples the second reads changes no value.

So the result is clip((R @ clip((X @ C.T + 2**21) >> 22) + 2**21) >> 22) per channel (or the same with R first),
with R [crop, H] the vertical and C [crop, W] the horizontal weights, of which only the rows the centre crop keeps
are built; a row for a pixel the crop takes from torchvision's zero padding (a crop larger than the resized image)
is all zeros, which gives 0 as the padding does. The products run in float64 on integer-valued weights: every
product and partial sum is an integer of magnitude at most 255 times the sum of the weights' magnitudes (under
1.5 * 2**22), far below 2**53, so the sums are exact in any order, which a BLAS (or a GPU's matrix unit) is free to
choose. Float32 is not enough (the sums pass 2**24): a GPU runs this in float64, or in int32 as Pillow does.

Where `plan` answers None, core/preprocess.py's Pillow path stays the only one: `nearest` (Pillow resizes it by
another route), and the boxed resize of extreme aspect ratios (`preprocess.boxed`: its box is float32 in Pillow's
C code, and it is a rare fallback). JPEG's draft mode (`preprocess.draft_request`) is a decoding choice, not a
resize: a backend that decodes at full size cannot reproduce it, so images large enough for it (shorter side at
least 8 x resize_size) stay on the host path too; `host_only` says so from the header's size alone, whatever the
format (a large PNG goes to the host as well: conservative, and rare at serving sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.preprocess import boxed, center_crop_box, draft_request, resized_size

PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2 (8 bits for the result, 2 for the filters' overshoot)
ONE = float(1 << PRECISION_BITS)
HALF = float(1 << (PRECISION_BITS - 1))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic with a = -0.5, each expression in the order Resample.c evaluates it (so every double is the same)
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def weights(in_size: int, out_size: int, interpolation: str, outputs: np.ndarray | None = None) -> np.ndarray:
    """Pillow's fixed-point weights of one axis resized from in_size to out_size samples: float64 [outputs, in], each
    value an integer (the weight times 2**22), for the output samples `outputs` (default: all of them); a row for an
    output outside 0..out_size-1 is all zeros."""
    outputs = np.arange(out_size) if outputs is None else np.asarray(outputs)
    dense = np.zeros((len(outputs), in_size))
    inside = (outputs >= 0) & (outputs < out_size)
    if out_size == in_size:  # Pillow leaves such an axis alone: each sample times 2**22, which the rounding keeps
        dense[np.flatnonzero(inside), outputs[inside]] = ONE
        return dense
    kernel, support = FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale
    centre = (outputs[inside].astype(np.float64) + 0.5) * scale
    first = np.maximum((centre - support + 0.5).astype(np.int64), 0)  # C's (int) cast: truncation toward zero
    count = np.minimum((centre + support + 0.5).astype(np.int64), in_size) - first
    taps = np.zeros((len(centre), ksize))
    total = np.zeros(len(centre))
    for x in range(ksize):  # one tap at a time, so that the sum of the weights is added in Pillow's order
        w = np.where(x < count, kernel(((x + first).astype(np.float64) - centre + 0.5) * inv_filterscale), 0.0)
        taps[:, x] = w
        total += w
    taps = np.divide(taps, total[:, None], out=taps, where=total[:, None] != 0.0)
    scaled = taps * ONE
    fixed = np.trunc(np.where(taps < 0, scaled - 0.5, scaled + 0.5))  # (int)(+-0.5 + w * 2**22)
    tap = np.arange(ksize)[None, :]
    used = tap < count[:, None]
    rows = np.broadcast_to(np.flatnonzero(inside)[:, None], used.shape)
    dense[rows[used], (first[:, None] + tap)[used]] = fixed[used]
    return dense


@dataclass(frozen=True)
class Plan:
    """One image's resize + crop: rows [crop, height] and cols [crop, width], Pillow's integer weights for the
    output rows and columns the crop keeps (times 2**22), and the input rows and columns they read."""

    rows: np.ndarray
    cols: np.ndarray
    row_span: tuple[int, int]
    col_span: tuple[int, int]
    vertical_first: bool


def vertical_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Whether Pillow 13 resizes width x height to new_width x new_height with the vertical pass first: where the
    height loses more than twice the samples the width does (Resample.c, `horizontal_first`). The order changes the
    pixels (each pass rounds), so this follows the Pillow the host path runs (the test compares the two)."""
    return height - new_height > 0 and height - new_height > 2 * (width - new_width)


def host_only(width: int, height: int, preprocess: dict[str, Any]) -> bool:
    """Whether a width x height image is prepared only by core/preprocess.py (see the module's docstring): a
    nearest-neighbour model, the boxed resize, or a JPEG large enough for the draft decode."""
    return (
        preprocess["interpolation"] not in FILTERS
        or boxed(width, height, preprocess)
        or draft_request(width, height, int(preprocess["resize_size"])) is not None
    )


def plan(width: int, height: int, preprocess: dict[str, Any]) -> Plan | None:
    """The two passes that turn a width x height RGB image into `prepare`'s [crop, crop, 3] pixels, or None where
    only the host path does it (a nearest-neighbour model, or the boxed resize)."""
    interpolation = preprocess["interpolation"]
    if interpolation not in FILTERS or boxed(width, height, preprocess):
        return None
    crop = int(preprocess["crop_size"])
    w, h = resized_size(width, height, int(preprocess["resize_size"]))
    # where the crop is larger than the resized image, torchvision (and `prepare`) centre it on a zero canvas first
    canvas_w, canvas_h = max(crop, w), max(crop, h)
    left, top, _, _ = center_crop_box(canvas_w, canvas_h, crop)
    left -= (canvas_w - w) // 2
    top -= (canvas_h - h) // 2
    cols = weights(width, w, interpolation, np.arange(crop) + left)
    rows = weights(height, h, interpolation, np.arange(crop) + top)
    return Plan(rows, cols, _span(rows), _span(cols), vertical_first(width, height, w, h))


def _span(m: np.ndarray) -> tuple[int, int]:
    used = np.flatnonzero(m.any(axis=0))
    return (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)


def _rounded(sums: np.ndarray) -> np.ndarray:
    """Pillow's end of a pass: (2**21 + sum) >> 22, clipped to 0..255 (exact in float64: a power-of-two division)."""
    return np.clip(np.floor((sums + HALF) / ONE), 0, 255)


def apply(plan: Plan, pixels: np.ndarray) -> np.ndarray:
    """uint8 [height, width, 3] -> uint8 [crop, crop, 3]: the two passes as matrix products, in Pillow's order."""
    r0, r1 = plan.row_span
    c0, c1 = plan.col_span
    crop = plan.rows.shape[0]
    if r1 == r0 or c1 == c0:  # the crop holds only padding
        return np.zeros((crop, crop, 3), np.uint8)
    x = pixels[r0:r1, c0:c1].astype(np.float64).transpose(2, 0, 1)  # [3, rows read, cols read]
    rows, cols = plan.rows[:, r0:r1], plan.cols[:, c0:c1].T
    # [3, crop, cols read] or [3, rows read, crop] after the first pass; [3, crop, crop] after the second
    out = _rounded(_rounded(rows @ x) @ cols) if plan.vertical_first else _rounded(rows @ _rounded(x @ cols))
    return np.ascontiguousarray(out.transpose(1, 2, 0)).astype(np.uint8)


def graph(vertical_first: bool) -> bytes:
    """`apply`'s two passes as a serialized ONNX graph, for the device ONNX Runtime runs on (a GPU's CUDA provider):
    inputs `pixels` uint8 [height, width, 3] (a whole decoded image: a device buffer is not cut on the host), `rows`
    float64 [crop, height] and `cols` float64 [width, crop] (a Plan's rows and cols.T, whole); output `crop` uint8
    [crop, crop, 3]. The columns and rows outside the spans are zero weights, which add nothing to the exact sums.
    Float64 throughout, for the reason in the module's docstring; a plan's `vertical_first` picks the graph.
    Built with the onnx package (a dependency of the project, not of a Bento: see service/preprocessing.py)."""
    from onnx import TensorProto, helper

    double = TensorProto.DOUBLE
    nodes = [
        # transposed while still uint8, then cast: the one float64 copy of the image is the largest tensor here (144 MB
        # for 6 megapixels), and a float64 transpose would be a second
        helper.make_node("Transpose", ["pixels"], ["chw"], perm=[2, 0, 1]),  # [3, height, width]
        helper.make_node("Cast", ["chw"], ["x"], to=double),
    ]

    def rounded(sums: str, out: str) -> None:  # `_rounded`: (2**21 + sum) >> 22, clipped to 0..255
        nodes.extend([
            helper.make_node("Add", [sums, "half"], [f"{out}_shifted"]),
            helper.make_node("Div", [f"{out}_shifted", "one"], [f"{out}_scaled"]),
            helper.make_node("Floor", [f"{out}_scaled"], [f"{out}_floor"]),
            helper.make_node("Clip", [f"{out}_floor", "zero", "top"], [out]),
        ])  # fmt: skip

    if vertical_first:  # [3, crop, width], then [3, crop, crop]
        nodes.append(helper.make_node("MatMul", ["rows", "x"], ["first_sums"]))
        rounded("first_sums", "first")
        nodes.append(helper.make_node("MatMul", ["first", "cols"], ["second_sums"]))
    else:  # [3, height, crop], then [3, crop, crop]
        nodes.append(helper.make_node("MatMul", ["x", "cols"], ["first_sums"]))
        rounded("first_sums", "first")
        nodes.append(helper.make_node("MatMul", ["rows", "first"], ["second_sums"]))
    rounded("second_sums", "second")
    nodes += [
        helper.make_node("Transpose", ["second"], ["hwc_out"], perm=[1, 2, 0]),
        helper.make_node("Cast", ["hwc_out"], ["crop"], to=TensorProto.UINT8),
    ]
    constants = [helper.make_tensor(name, double, [], [value])
                 for name, value in (("half", HALF), ("one", ONE), ("zero", 0.0), ("top", 255.0))]  # fmt: skip
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "pillow_resize_crop",
            [
                helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["height", "width", 3]),
                helper.make_tensor_value_info("rows", double, ["crop", "height"]),
                helper.make_tensor_value_info("cols", double, ["width", "crop"]),
            ],
            [helper.make_tensor_value_info("crop", TensorProto.UINT8, ["crop", "crop", 3])],
            constants,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8  # what onnxruntime 1.20 and later read
    return model.SerializeToString()
