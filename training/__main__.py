"""Command line of the training stage.

python -m training fit --config configs/digits_resnet18.yaml --out runs/digits-resnet18 [--set k=v ...]
python -m training fit --out runs/digits-resnet18 --resume
python -m training evaluate runs/digits-resnet18/best.pt [--data DIR] [--split test] [--tta hflip]
python -m training data digits --out data/digits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model from a recipe")
    fit.add_argument("--config", help="recipe YAML (default with --resume: OUT/config.yaml)")
    fit.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    fit.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe keys")
    fit.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    fit.add_argument("--runs", type=int, default=1, help="repeat with N seeds; report mean +- std")

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="dataset root (default: the checkpoint's own)")
    ev.add_argument("--dataset", choices=["digits", "cifar10", "cifar100", "imagefolder"])
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--tta", default="none", choices=["none", "hflip"])
    ev.add_argument("--weights", default="best", choices=["best", "model", "ema"])
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--confusion", help="confusion matrix PNG (default: beside the checkpoint)")

    data = sub.add_parser("data", help="materialize a bundled dataset")
    data.add_argument("name", choices=["digits"])
    data.add_argument("--out", default="data/digits")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fit":
            from training.config import load_config
            from training.fit import fit_runs

            config_path = args.config or (Path(args.out) / "config.yaml" if args.resume else None)
            if config_path is None:
                raise UserError("fit needs --config (or --resume with an existing run folder)")
            if args.runs < 1:
                raise UserError("--runs must be at least 1")
            fit_runs(load_config(config_path, args.set), args.out, args.runs, resume=args.resume)
        elif args.command == "evaluate":
            from training.evaluate import evaluate_checkpoint

            result = evaluate_checkpoint(
                args.checkpoint, args.data, args.dataset, args.split, args.tta, args.weights,
                args.device, args.batch_size, args.confusion,
            )  # fmt: skip
            print(json.dumps(result))
        elif args.command == "data":
            from training.digits import write_digits

            print(write_digits(args.out))
    except UserError as e:
        # DataLoader workers re-raise with the worker's traceback prepended; keep the message only
        message = str(e).strip().splitlines()[-1].split("UserError: ")[-1]
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
