"""Distillation, self-training, bagging and progressive learning through the CLI, on small digits budgets."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from tests.conftest import DIGITS_RECIPE, split_probabilities, training_in_process
from training import checkpoint as ckpt
from training.__main__ import main
from training.digits import write_digits


@pytest.fixture(scope="module")
def low_label(tmp_path_factory):
    """Digits with 10% of the train labels (126 images) and the rest in unlabeled/."""
    return write_digits(tmp_path_factory.mktemp("data") / "digits-10pct", label_fraction=0.1)


def _folder(root) -> list[str]:
    return ["data.dataset=imagefolder", f"data.root={root}", "data.workers=0"]


@pytest.mark.slow
def test_distillation_beats_the_student_alone_on_a_small_label_budget(trained_digits, low_label, tmp_path):
    # same number of optimizer steps: 20 epochs of 126 labelled images against 2 epochs of 1,258 images
    alone = training_in_process(
        "fit", "--config", DIGITS_RECIPE, "--out", tmp_path / "alone", "--set", *_folder(low_label), "train.epochs=20"
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    kd = training_in_process(
        "distill", "--teacher", trained_digits / "best.pt", "--config", DIGITS_RECIPE, "--out", tmp_path / "kd",
        "--unlabeled", low_label / "unlabeled", "--set", *_folder(low_label), "train.epochs=2",
    )  # fmt: skip
    assert kd.returncode == 0, kd.stderr[-2000:]
    alone_acc = json.loads((tmp_path / "alone" / "summary.json").read_text())["test_acc"]
    kd_summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    assert kd_summary["unlabeled_images"] == 1132 and kd_summary["teachers"] == [str(trained_digits / "best.pt")]
    assert kd_summary["test_acc"] >= alone_acc + 0.1, (kd_summary["test_acc"], alone_acc)
    # an ordinary checkpoint: same keys as fit's, and the student's own labels
    student = ckpt.load(tmp_path / "kd" / "best.pt")
    assert student["arch"] == "resnet18" and student["labels"] == [str(i) for i in range(10)]
    assert student["config"]["distill"]["teachers"] == [str(trained_digits / "best.pt")]


def _error_of(capsys, *args) -> str:
    """Run the CLI in this process (no torch import per case) and return its one error line."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_distill_errors(trained_digits, low_label, tmp_path, capsys):
    other = tmp_path / "letters"
    for name in ("a", "b"):
        shutil.copytree(low_label / "train" / "0", other / "train" / name)
    teacher = ("--teacher", trained_digits / "best.pt")
    base = ("distill", "--config", DIGITS_RECIPE, "--out", tmp_path / "run")
    for flags, sets, message in [
        ((), (), "needs at least one --teacher"),
        (teacher, (f"data.root={other}",), "the student's data has 2 classes"),
        (teacher, ("augment.mixup_p=0.5",), "set augment.cutmix_p and mixup_p"),
        ((*teacher, "--unlabeled", tmp_path / "none"), (), "unlabelled image folder not found"),
        (("--teacher", tmp_path / "missing.pt"), (), "missing.pt"),
        (teacher, ("distill.alpha=1.5",), "distill.alpha must be a number from 0 to 1, got 1.5"),
    ]:
        assert message in _error_of(capsys, *base, *flags, "--set", *_folder(low_label), *sets)


@pytest.mark.slow
def test_one_self_training_iteration_saves_its_pseudo_labels(low_label, tmp_path):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for path in sorted((low_label / "unlabeled").glob("*.png"))[:200]:
        shutil.copy(path, unlabeled / path.name)
    out = tmp_path / "st"
    result = training_in_process(
        "self-train", "--config", DIGITS_RECIPE, "--unlabeled", unlabeled, "--iterations", 1, "--out", out,
        "--set", *_folder(low_label), "train.epochs=2", "self_train.balance=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with (out / "iter1" / "pseudo_labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    counts = {}
    for row in rows:
        assert (unlabeled / row["path"].rsplit("/", 1)[-1]).exists()
        assert abs(sum(float(row[f"prob_{c}"]) for c in range(10)) - 1) < 1e-4
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    assert len(set(counts.values())) == 1  # balanced: every predicted class has the same count
    with (out / "metrics.csv").open() as f:
        metrics = list(csv.DictReader(f))
    assert [m["iteration"] for m in metrics] == ["0", "1"] and int(metrics[1]["pseudo_labelled"]) == len(rows)
    assert metrics[0]["pseudo_labelled"] == "0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unlabeled_images"] == 200 and len(summary["iterations"]) == 2
    assert (out / "curves.png").stat().st_size > 0
    assert ckpt.load(out / "best.pt")["metrics"]["test_acc"] == summary["final_test_acc"]

    # the same teacher labels the folder through the stand-alone command
    teacher = out / "iter0" / "best.pt"
    labels = training_in_process("pseudo-label", teacher, "--images", unlabeled, "--out", tmp_path / "p.csv")
    assert labels.returncode == 0, labels.stderr[-2000:]
    assert json.loads(labels.stdout.strip().splitlines()[-1])["rows"] == 200
    too_high = training_in_process("pseudo-label", teacher, "--images", unlabeled, "--out", tmp_path / "q.csv",
                                   "--threshold", "0.99999")  # fmt: skip
    assert too_high.returncode == 2 and "no image reaches the pseudo-label threshold" in too_high.stderr


def test_self_train_errors(low_label, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    base = ("self-train", "--config", DIGITS_RECIPE, "--out", tmp_path / "run")
    for args, message in [
        (("--set", *_folder(low_label)), "needs --unlabeled DIR"),
        (("--unlabeled", tmp_path / "empty", "--set", *_folder(low_label)), "no images in"),
        (("--unlabeled", low_label / "unlabeled", "--set", *_folder(low_label), "model.arch=resnet34",
          "self_train.student_archs=[resnet18]"), "smaller than its teacher"),
        (("--unlabeled", low_label / "unlabeled", "--set", *_folder(low_label), "self_train.threshold=1.5"),
         "self_train.threshold must be a number of at least 0 and less than 1"),
    ]:  # fmt: skip
        assert message in _error_of(capsys, *base, *args)
    assert not (tmp_path / "run" / "iter0").exists()  # refused before any training


@pytest.mark.slow
def test_a_bag_of_three_votes_no_worse_than_its_mean_member(digits_root, tmp_path):
    out = tmp_path / "bag"
    result = training_in_process(
        "bag", "--config", DIGITS_RECIPE, "--members", 3, "--bootstrap", "--out", out, "--set",
        f"data.root={digits_root}", "data.limit=400", "data.batch_size=32", "train.epochs=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["members"] == 3 and summary["split"] == "test" and summary["n"] == 359
    assert summary["soft_vote_acc"] >= summary["member_acc_mean"], summary
    assert summary["hard_vote_acc"] >= summary["member_acc_mean"] - 0.01, summary
    assert [json.loads((out / f"member{i}" / "summary.json").read_text())["seed"] for i in range(3)] == [0, 1, 2]
    # the votes, recomputed here from each member checkpoint's own probabilities on the test split
    members = [split_probabilities(out / f"member{i}" / "best.pt") for i in range(3)]
    labels = members[0][1]
    probs = np.stack([p for p, _ in members])  # [member, image, class]
    accs = [(p.argmax(1) == labels).mean() for p in probs]
    soft = probs.mean(0).argmax(1)
    ballots = np.stack([np.bincount(p, minlength=probs.shape[2]) for p in probs.argmax(2).T])  # [image, class]
    # most votes; among the classes tied for most, the higher mean probability
    hard = np.where(ballots == ballots.max(1, keepdims=True), probs.mean(0), -1).argmax(1)
    assert summary["member_acc"] == pytest.approx(accs, abs=2e-6)
    assert summary["soft_vote_acc"] == pytest.approx((soft == labels).mean(), abs=2e-6)
    assert summary["hard_vote_acc"] == pytest.approx((hard == labels).mean(), abs=2e-6)
    assert "| soft vote |" in (out / "report.md").read_text() and (out / "members.png").exists()
    assert "python -m export ensemble models/bag-member0.onnx models/bag-member1.onnx" in result.stdout


@pytest.mark.slow
def test_progressive_stages_appear_in_the_metrics(digits_root, tmp_path):
    out = tmp_path / "prog"
    result = training_in_process(
        "fit", "--config", DIGITS_RECIPE, "--out", out, "--set", f"data.root={digits_root}", "data.limit=128",
        "data.batch_size=32", "train.epochs=2", "progressive.stages=2", "progressive.start_size=16",
        "model.dropout=0.2", "progressive.start_dropout=0.0", "progressive.batch_sizes=[64, 32]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["train_size"]) for r in rows] == [("1", "16"), ("2", "32")]
    assert "stage 2/2: size 32, batch 32" in result.stdout + result.stderr
    assert ckpt.load(out / "best.pt")["preprocess"]["crop_size"] == 32  # evaluation stays at the final size
