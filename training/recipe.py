"""What a training recipe may say: every key's type, default, range and meaning, in one place.

A recipe file only names what differs from these defaults (training/config.py loads it, applies `--set` and
writes the resolved config). Keys are checked by pydantic, strictly: YAML already types its values, so "5" is
not a number and 1 is not true; a whole number may stand for a number. core/schema.py renders the mistakes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from core.schema import Section

Fraction = Annotated[float, Field(ge=0, le=1)]


class Data(Section):
    dataset: Literal["digits", "photos", "cifar10", "cifar100", "imagefolder"] = "digits"
    root: str = "data/digits"
    download: bool = Field(False, description="cifar only: allow torchvision to download into root")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out from train when the dataset has no val split")
    limit: int = Field(0, ge=0, description="keep at most this many images per split (0 = all); for smoke runs")
    on_bad_image: Literal["error", "skip"] = Field("error", description="what to do with a file that does not decode")
    allow_missing_classes: bool = Field(
        False,
        description="a val/test split lacking some of train's classes is refused: its accuracy says nothing about "
        "them. true accepts it (a rare class with no held-out images in a small folder of photos)",
    )
    batch_size: int = Field(64, ge=1, description="global batch: divided across DDP processes")
    eval_batch_size: int = Field(256, ge=1)
    workers: int = Field(2, ge=0, description="DataLoader worker processes (0 = load in the main process)")


class Model(Section):
    arch: str = Field("resnet18", description="any torchvision classification model name")
    pretrained: str = Field("none", description="imagenet | none | <weights enum name> | <path to .pth / checkpoint>")
    transfer: Literal["full", "linear_probe"] = "full"
    backbone_lr_mult: float = Field(
        1.0, ge=0, description="lr of the pretrained body relative to the new head; 1 when pretrained is none"
    )
    dropout: float | None = Field(None, ge=0, le=1, description="classifier dropout; None keeps the arch's default")
    stochastic_depth_prob: float | None = Field(
        None, ge=0, le=1, description="EfficientNet / ConvNeXt / Swin; None keeps the default"
    )


class Preprocess(Section):
    """Overrides of the preprocessing that comes with the weights; None keeps the weights' value."""

    resize_size: int | None = Field(None, ge=1)
    crop_size: int | None = Field(None, ge=1)
    interpolation: Literal["nearest", "bilinear", "bicubic"] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


class Augment(Section):
    crop: Literal["resize", "random_resized"] = Field(
        "resize", description="resize: resize + center crop | random_resized: RandomResizedCrop"
    )
    min_scale: float = Field(0.08, gt=0, le=1, description="random_resized only")
    crop_padding: int = Field(0, ge=0, description="RandomCrop padding (pixels at the final size) after the resize")
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = Field(
        "reflect", description="reflect avoids black borders the eval images never have"
    )
    hflip: Fraction = Field(0.0, description="probability of a horizontal flip")
    rotation: float = Field(0.0, ge=0, description="degrees")
    color_jitter: float = Field(0.0, ge=0)
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    randaugment_num_ops: int = Field(2, ge=0)
    # torchvision's RandAugment has 31 magnitude bins, 0 to 30
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    random_erasing: Fraction = Field(0.0, description="probability of erasing a random rectangle")
    cutmix_p: Fraction = 0.0
    cutmix_alpha: float = Field(1.0, ge=0)
    mixup_p: Fraction = 0.0
    mixup_alpha: float = Field(0.2, ge=0)


class Optim(Section):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0, description="never applied to norm layers and biases")
    momentum: float = Field(0.9, ge=0, le=1, description="sgd")
    nesterov: bool = Field(True, description="sgd")
    betas: list[Fraction] = Field([0.9, 0.999], min_length=2, max_length=2, description="adamw")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    clip_grad_norm: float = Field(0.0, ge=0, description="0 = off")


class Schedule(Section):
    name: Literal["cosine", "step", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, description="step: decay factor")
    min_lr_factor: Fraction = Field(0.0, description="cosine: final lr as a fraction of lr")


class Train(Section):
    epochs: int = Field(30, ge=1)
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="fp16 needs CUDA")
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = Field(
        False, description="DDP on CUDA: BatchNorm statistics over the global batch, not each GPU's share"
    )
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="0 = no EMA; e.g. 0.999 keeps an exponential moving average of weights"
    )
    log_every: int = Field(10, ge=1, description="steps between progress lines")
    bn_recompute_batches: int = Field(
        0,
        ge=0,
        description="before each evaluation, BatchNorm statistics recomputed from this many batches of the train "
        "split at eval preprocessing (0 = off): from scratch with few steps an epoch, the running ones lag",
    )


class Progressive(Section):
    """EfficientNetV2's progressive learning: train in stages whose image size and regularization grow linearly
    from the start_* values to the recipe's own (final) values; eval stays at the final size."""

    stages: int = Field(0, ge=0, description="0 = off; else this many stages of equal length")
    start_size: int = Field(
        0, ge=0, description="train crop size of the first stage (the last uses preprocess.crop_size); 0 = half"
    )
    start_randaugment_magnitude: float | None = Field(
        None, ge=0, le=30, description="None = the recipe's value in every stage"
    )
    start_mixup_alpha: float | None = Field(None, ge=0, description="a stage whose alpha is 0 does no MixUp")
    start_cutmix_alpha: float | None = Field(None, ge=0)
    start_dropout: float | None = Field(
        None, ge=0, le=1, description="scales every Dropout module of the model from this p to its built p"
    )
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        [], description="optional global batch size per stage (small images fit larger batches)"
    )


class Distill(Section):
    """`python -m training distill`: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)."""

    teachers: list[str] = Field(
        [], description="checkpoint paths (the CLI's --teacher); their probabilities are averaged"
    )
    alpha: Fraction = Field(0.5, description="weight of the hard-label loss on labelled images; unlabelled use 0")
    temperature: float = Field(4.0, gt=0)
    unlabeled: str = Field("", description="folder of unlabelled images added as a transfer set (--unlabeled)")


class SelfTrain(Section):
    """`python -m training self-train` (Noisy Student); the recipe's augment/dropout settings are the noise."""

    iterations: int = Field(1, ge=1)
    unlabeled: str = Field("", description="folder of unlabelled images (the CLI's --unlabeled)")
    soft: bool = Field(True, description="soft pseudo-labels (teacher probabilities) or hard ones (one-hot argmax)")
    threshold: float = Field(0.0, ge=0, lt=1, description="keep images whose top teacher probability is at least this")
    balance: bool = Field(
        False, description="same number of pseudo-labelled images per class (top-confidence / repeats)"
    )
    student_archs: list[str] = Field(
        [], description="arch of the student of each iteration; empty = the recipe's arch throughout"
    )
    teacher_labels: list[str] = Field(
        [],
        description="the teacher's labels of iteration 1, 2, ... from files (service.predict --probabilities, "
        "e.g. --ray) instead of labelling in this process; iterations past the list label here",
    )

    @model_validator(mode="after")
    def _labels_fit_iterations(self) -> SelfTrain:
        if len(self.teacher_labels) > self.iterations:
            raise ValueError(f"{{path}}.teacher_labels lists {len(self.teacher_labels)} files for {self.iterations} "
                             "iterations")  # fmt: skip
        return self


class Bag(Section):
    """`python -m training bag`: members differ by seed, and optionally by resample and recipe overrides."""

    members: int = Field(3, ge=2, description="at least 2: an ensemble of one is the plain recipe")
    bootstrap: bool = Field(False, description="each member trains on a resample with replacement of the train split")
    variants: list[dict[str, Any]] = Field(
        [], description="per-member --set overrides used in turn, e.g. [{model.arch: resnet34}, {}]"
    )


class Recipe(Section):
    """The whole recipe, section by section; its dump is the resolved config a run writes as config.yaml."""

    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = Field(False, description="deterministic kernels and seeded everything (slower on GPU)")
    data: Data = Data()
    model: Model = Model()
    preprocess: Preprocess = Preprocess()
    augment: Augment = Augment()
    optim: Optim = Optim()
    schedule: Schedule = Schedule()
    train: Train = Train()
    progressive: Progressive = Progressive()
    distill: Distill = Distill()
    self_train: SelfTrain = SelfTrain()
    bag: Bag = Bag()
