"""Command line of the training stage.

python -m training fit --config configs/digits_resnet18.yaml --out runs/digits-resnet18 [--set k=v ...]
python -m training fit --out runs/digits-resnet18 --resume       (or --overwrite: start that run afresh)
python -m training evaluate runs/digits-resnet18/best.pt [--data DIR] [--split test] [--tta hflip]
python -m training data digits --out data/digits [--label-fraction 0.1]
python -m training data photos --out data/photos
python -m training distill --teacher T.pt [--teacher ...] --config STUDENT.yaml --out runs/NAME [--unlabeled DIR]
python -m training self-train --config RECIPE.yaml --unlabeled DIR --iterations K --out runs/NAME
python -m training pseudo-label CKPT --images DIR --out labels.csv [--threshold P] [--balance]
python -m training pseudo-label CKPT --teacher-labels PARTS_DIR_OR_CSV --out labels.csv     (service.predict's rows)
python -m training bag --config RECIPE.yaml --members M --out runs/NAME [--bootstrap]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import UserError, one_line
from training import run_folder
from training.config import parse_overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model from a recipe")
    fit.add_argument("--config", help="recipe YAML (default with --resume: OUT/config.yaml)")
    fit.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    fit.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe keys")
    fit.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    fit.add_argument("--overwrite", action="store_true", help="delete the run already in OUT, then train afresh")
    fit.add_argument("--runs", type=int, default=1, help="repeat with N seeds; report mean +- std")

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="dataset root (default: the checkpoint's own)")
    ev.add_argument("--dataset", choices=["digits", "photos", "cifar10", "cifar100", "imagefolder"])
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--tta", default="none", choices=["none", "hflip"])
    ev.add_argument("--weights", default="best", choices=["best", "model", "ema"])
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--confusion", help="confusion matrix PNG (default: beside the checkpoint)")

    data = sub.add_parser("data", help="materialize a bundled dataset")
    data.add_argument("name", choices=["digits", "photos"])
    data.add_argument("--out", help="where to write it (default: data/NAME)")
    data.add_argument(
        "--label-fraction", type=float, default=1.0,
        help="digits only: keep this share of train labels; the rest go to unlabeled/",
    )  # fmt: skip

    distill = _recipe_command(sub, "distill", "train a student from teacher checkpoints (knowledge distillation)")
    distill.add_argument("--teacher", action="append", default=[], help="teacher checkpoint; repeat for an ensemble")
    distill.add_argument("--unlabeled", help="folder of unlabelled images to distill on as well (alpha = 0 there)")

    st = _recipe_command(sub, "self-train", "Noisy Student self-training on unlabelled images")
    st.add_argument("--unlabeled", help="folder of unlabelled images")
    st.add_argument("--iterations", type=int, help="teacher -> student rounds (default: self_train.iterations)")
    st.add_argument("--teacher-labels", nargs="+", help="per iteration, the teacher's rows from python -m service."
                    "predict --probabilities (Parquet parts folder, .parquet or .csv), not labelling here")  # fmt: skip

    pl = sub.add_parser("pseudo-label", help="label a folder of images with a checkpoint")
    pl.add_argument("checkpoint")
    pl.add_argument("--images", help="folder of images (any layout)")
    pl.add_argument("--teacher-labels", help="the teacher's rows from python -m service.predict --probabilities "
                    "(Parquet parts folder, .parquet or .csv) instead of labelling --images here")  # fmt: skip
    pl.add_argument("--out", required=True, help="CSV to write: path, label, confidence, prob_<class>...")
    pl.add_argument("--threshold", type=float, default=0.0, help="keep images whose top probability is at least this")
    pl.add_argument("--balance", action="store_true", help="the same number of images for every class")
    pl.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pl.add_argument("--batch-size", type=int, default=256)

    bag = _recipe_command(sub, "bag", "train a bagged ensemble and report its vote against its members")
    bag.add_argument("--members", type=int, help="ensemble size (default: bag.members)")
    bag.add_argument("--bootstrap", action="store_true", help="train each member on a resample of the train split")
    return parser


def _recipe_command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that trains from a recipe: --config, --out, --set, --resume like `fit`."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", help="recipe YAML (default with --resume: OUT/config.yaml)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe keys")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in OUT, then train afresh")
    return p


def _recipe(args: argparse.Namespace, flags: dict) -> dict:
    """The resolved config of a recipe command (recipe, then command-line flags, then --set), once --out may
    take the run: a run already there is refused without --resume / --overwrite (training/run_folder.py)."""
    from training.config import load_config
    from training.data import build_splits
    from training.log import is_main_process
    from training.models import check_arch
    from training.run_folder import claim

    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
    config_path = args.config or (Path(args.out) / "config.yaml" if args.resume else None)
    if config_path is None:
        raise UserError(f"{args.command} needs --config (or --resume with an existing run folder)")
    overrides = {k: v for k, v in flags.items() if v not in (None, [], False)}
    overrides = {**overrides, **parse_overrides(args.set)}
    config = load_config(config_path, overrides)
    # an unknown arch and the data's own refusals (a data.root one level too high, a split missing a class) come
    # before --overwrite clears anything, as a recipe's typo does: a refused run leaves --out as it was
    try:
        check_arch(config["model"]["arch"])
    except UserError as e:
        raise UserError(str(e) if "model.arch" in overrides else f"{e} (in {config_path})") from None
    build_splits(config["data"])
    claim(args.out, args.resume, args.overwrite, is_main_process())
    return config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fit":
            from training.fit import fit_runs

            if args.runs < 1:
                raise UserError("--runs must be at least 1")
            fit_runs(_recipe(args, {}), args.out, args.runs, resume=args.resume)
        elif args.command == "distill":
            from training.fit import fit
            from training.kd import DistillationTask

            flags = {"distill.teachers": args.teacher, "distill.unlabeled": args.unlabeled}
            config = _recipe(args, flags)
            fit(config, args.out, resume=args.resume, task=DistillationTask(config["distill"]))
        elif args.command == "self-train":
            from training.self_train import self_train

            flags = {"self_train.unlabeled": args.unlabeled, "self_train.iterations": args.iterations,
                     "self_train.teacher_labels": args.teacher_labels}  # fmt: skip
            self_train(_recipe(args, flags), args.out, resume=args.resume)
        elif args.command == "pseudo-label":
            from training.distributed import resolve_device
            from training.unlabeled import pseudo_label

            if not 0.0 <= args.threshold < 1.0:
                raise UserError(f"--threshold must be in [0, 1), got {args.threshold}")
            if (args.images is None) == (args.teacher_labels is None):
                raise UserError("pseudo-label needs --images DIR (label here) or --teacher-labels FILE, one of them")
            result = pseudo_label(
                args.checkpoint, args.images, args.out, args.threshold, args.balance,
                resolve_device(args.device), args.batch_size, args.teacher_labels,
            )  # fmt: skip
            print(json.dumps(result))
        elif args.command == "bag":
            from training.bag import bag

            bag(_recipe(args, {"bag.members": args.members, "bag.bootstrap": args.bootstrap}), args.out, args.resume)
        elif args.command == "evaluate":
            from training.evaluate import evaluate_checkpoint

            result = evaluate_checkpoint(
                args.checkpoint, args.data, args.dataset, args.split, args.tta, args.weights,
                args.device, args.batch_size, args.confusion,
            )  # fmt: skip
            print(json.dumps(result))
        elif args.command == "data":
            out = args.out or f"data/{args.name}"
            if not 0.0 < args.label_fraction <= 1.0:
                raise UserError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
            if args.name == "photos":
                from training.photos import write_photos

                if args.label_fraction != 1.0:
                    raise UserError("--label-fraction is for digits only; the photos dataset has no unlabeled/ split")
                print(write_photos(out))
            else:
                from training.digits import write_digits

                print(write_digits(out, args.label_fraction))
    except UserError as e:
        run_folder.put_back()  # a run refused before it started leaves --out as it was
        print(one_line(e), file=sys.stderr)
        return 2
    except BaseException:  # Ctrl-C or a bug before the run started: the earlier run back too
        run_folder.put_back()
        raise
    run_folder.started()
    return 0


if __name__ == "__main__":
    sys.exit(main())
