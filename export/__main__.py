"""Command line of the export stage.

    python -m export runs/NAME/best.pt --out models/NAME.onnx [--fp16] [--store NAME]
    python -m export runs/NAME/best.pt --store NAME          # the graph goes to models/NAME.onnx
    python -m export ensemble models/a.onnx models/b.onnx --out models/ens.onnx [--weights 2 1] [--store NAME]

Every export verifies itself before it reports success and exits 1 when the figures miss the
thresholds (the unverified file is removed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core import devices
from core.errors import UserError, one_line, say_error

VERIFY_FAILED = 1


def _single_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description="checkpoint -> verified ONNX graph")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="ONNX file to write (default with --store NAME: models/NAME.onnx)")
    p.add_argument("--fp16", action="store_true", help="float16 network (uint8 in, float32 out), for GPUs")
    p.add_argument(
        "--weights",
        default="best",
        choices=["best", "model", "ema"],
        help="best: the weights the run selected (EMA when it kept one)",
    )
    p.add_argument("--store", metavar="NAME", help="also import into the BentoML model store as NAME")
    p.add_argument("--opset", type=int, help="ONNX opset (default: export.graph.OPSET)")
    p.add_argument("--data", help="dataset root for the verification images (default: the checkpoint's)")
    p.add_argument("--verify-images", type=int, default=256, help="how many validation images to compare on")
    return p


def _ensemble_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export ensemble", description="fuse member graphs into one")
    p.add_argument("members", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", type=float, nargs="+", help="per-member weights for weighted soft voting")
    p.add_argument("--store", metavar="NAME")
    return p


def default_out(out: str | None, store: str | None) -> str:
    """Where the graph goes: --out, or with --store NAME alone models/NAME.onnx.

    A file that stays, not a temporary one: `make demo` and the README put graphs there, `python -m export
    ensemble` takes member files, and the verified graph can be opened or benchmarked without the store."""
    if out:
        return out
    if not store:
        raise UserError("give --out FILE.onnx, or --store NAME to write models/NAME.onnx and store it")
    return str(Path("models") / f"{store}.onnx")


def export_single(args: argparse.Namespace) -> int:
    from export.graph import OPSET, export_onnx
    from export.store import check_name
    from export.verify import verification_images, verify_export
    from training import checkpoint as ckpt
    from training.models import resolve_weights

    if args.store:
        check_name(args.store)
    args.out = default_out(args.out, args.store)
    checkpoint = ckpt.load(args.checkpoint)
    weights = resolve_weights(checkpoint, args.weights)
    images = verification_images(checkpoint, args.data, args.verify_images)
    start = time.perf_counter()
    out, meta = export_onnx(checkpoint, args.checkpoint, args.out, fp16=args.fp16, weights=weights,
                            opset=OPSET if args.opset is None else args.opset)  # fmt: skip
    print(f"exported {checkpoint['arch']} ({weights} weights) to {out} in {time.perf_counter() - start:.1f}s")
    figures = verify_export(out, checkpoint, weights, args.fp16, images, devices.providers())
    print(f"verify: {json.dumps(figures)}")
    if not figures["passed"]:
        out.unlink()
        say_error(
            f"ONNX Runtime disagrees with PyTorch ({figures['threshold']} not met: max_abs_diff "
            f"{figures['max_abs_diff']:.3g}, top1_agreement {figures['top1_agreement']:.4f}); removed {out}"
        )
        return VERIFY_FAILED
    if args.store:
        print(f"stored: {_store(out, args.store, meta)}")
    return 0


def export_ensemble(args: argparse.Namespace) -> int:
    import numpy as np
    import onnx

    from core import metadata
    from export.ensemble import fuse
    from export.store import check_name
    from export.verify import check_graph, compare, session

    if args.store:
        check_name(args.store)
    fused = fuse(args.members, args.weights)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(fused, str(out))
    check_graph(out)
    meta = metadata.decode({p.key: p.value for p in fused.metadata_props})
    # the fused graph must equal running the members one by one and averaging with the weights
    crop = meta["crop_size"]
    pixels = np.random.default_rng(0).integers(0, 256, (8, crop, crop, 3), dtype=np.uint8)
    fused_probs, fused_members = session(out).run(["probabilities", "member_probabilities"], {"images": pixels})
    members = np.stack([session(p).run(["probabilities"], {"images": pixels})[0] for p in args.members])
    expected = np.tensordot(np.asarray(meta["weights"], dtype=np.float32), members, axes=1)
    figures = {"members": compare(members.reshape(-1, members.shape[-1]), fused_members.reshape(-1, members.shape[-1])),
               "vote": compare(expected, fused_probs)}  # fmt: skip
    passed = figures["members"]["max_abs_diff"] <= 1e-5 and figures["vote"]["max_abs_diff"] <= 1e-5
    print(f"ensemble of {len(args.members)} members, weights {meta['weights']} -> {out}")
    print(f"verify: {json.dumps({**figures, 'passed': passed})}")
    if not passed:
        out.unlink()
        say_error("the fused graph does not reproduce its members; removed it")
        return VERIFY_FAILED
    if args.store:
        print(f"stored: {_store(out, args.store, meta)}")
    return 0


def _store(path: Path, name: str, meta: dict) -> str:
    from export.store import store_model

    return store_model(path, name, meta)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["ensemble"]:
            return export_ensemble(_ensemble_parser().parse_args(argv[1:]))
        return export_single(_single_parser().parse_args(argv))
    except UserError as e:
        print(one_line(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
