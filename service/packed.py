"""The serving config a Bento carries, so that a Bento serves exactly what the file it was built from names.

    SERVING_CONFIG=mine.yaml bentoml build       # the Bento serves mine.yaml's models, and carries them
    make bento SERVING_CONFIG=mine.yaml          # the same
    bentoml serve classifier:latest              # reads the config packed into the Bento, not ./serving.yaml

`bentoml build` imports the service to learn its models (the BentoModel attributes that service.py declares
from the config), then copies the files bentofile.yaml `include`s. A config named by SERVING_CONFIG may lie
outside the build context, where `include` cannot reach, and a packed copy of serving.yaml would name other
models than the ones packed. So the file's text travels as a Bento argument instead: BentoML stores the
arguments set while the service is imported in bento.yaml (`args`, BentoInfo's `args` field, whose default
is read after that import) and sets them again before it imports the service of a Bento (`_load_bento` in
bentoml/_internal/service/loader.py), in the server and in each worker (`--args`). `bentoml get TAG -o yaml`
shows it under `args: serving_config`.

Setting an argument has no public API (`bentoml.use_arguments` reads them; `bentoml build --arg` sets
strings only), so this module writes through `bentoml._internal.utils.args.set_arguments`, checked against
bentoml 1.4.40 by `check()` at start-up (service/patches.py). It can go when BentoML packs a file named at
build time, or lets a service add to a Bento's files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from service import config as serving_config
from service import patches

ARG = "serving_config"  # the Bento argument: {"path": the file it was built from, "yaml": its text}
# a Bento is a folder with bento.yaml beside src/, and src/ holds this package: <bento>/src/service/packed.py
BENTO_ROOT = Path(__file__).resolve().parents[2]


logger = logging.getLogger("service")
_read: tuple[Path, str] | None = None  # the checkout's config file and the text the service was configured from


def load_or_exit() -> serving_config.ServingConfig:
    """The config to serve (one line on stderr and exit status 2 for a bad one).

    In a Bento: the one packed into it, whatever SERVING_CONFIG says, since the Bento carries only that
    one's models. In a checkout: $SERVING_CONFIG or serving.yaml, kept for a `bentoml build` to pack."""
    patches.guard(check)
    if in_bento():
        carried = packed()
        if carried is None:  # a Bento built before configs were packed reads the serving.yaml it included
            return serving_config.load_or_exit(BENTO_ROOT / "src" / serving_config.DEFAULT_PATH)
        if os.environ.get("SERVING_CONFIG"):
            logger.warning("SERVING_CONFIG is ignored in a Bento: it serves the config it was built from (%s)",
                           carried["path"])  # fmt: skip
        config = serving_config.load_or_exit(f"the Bento's {carried['path']}", carried["yaml"])
        # the versions packed, not whatever is latest in the store the Bento is served next to
        pinned = carried.get("models") or {}
        config.models = [pinned.get(serving_config.model_name(tag), tag) for tag in config.models]
        return config
    global _read
    path = serving_config.config_path()
    text = serving_config.read_or_exit(path)  # a missing file, or one that is not UTF-8: one line
    config = serving_config.load_or_exit(path, text)
    _read = (path, text)
    record(path, text, {})
    return config


def in_bento(root: Path = BENTO_ROOT) -> bool:
    """Whether this code runs from a built Bento (a Bento folder, or the image bentoml containerize made)."""
    return (root / "bento.yaml").is_file() and (root / "src" / "service").is_dir()


def packed() -> dict[str, Any] | None:
    """The config packed into the Bento being served: {"path", "yaml", "models"}, or None (a Bento built
    without one)."""
    import bentoml

    value = getattr(bentoml.use_arguments(), ARG, None)
    if isinstance(value, dict) and isinstance(value.get("yaml"), str):
        return {"path": str(value.get("path", "serving.yaml")), "yaml": value["yaml"], "models": value.get("models")}
    return None


def record(path: Path, text: str, models: dict[str, str]) -> None:
    """Keep the config's text and the model version each name resolved to among the Bento arguments, where
    `bentoml build` finds and stores them."""
    import bentoml
    from bentoml._internal.utils.args import set_arguments

    value = {"path": str(path), "yaml": text, **({"models": models} if models else {})}
    set_arguments({**vars(bentoml.use_arguments()), ARG: value})


def pin(models: dict[str, str]) -> None:
    """In a checkout, `record` the config read and the versions `models` (tags by name) resolved to; a Bento
    carries both already."""
    if not in_bento() and _read is not None:
        record(*_read, models)


@patches.checks("service/packed.py")
def check() -> None:
    """set_arguments still merges into the arguments that bentoml.use_arguments reads and a Bento stores."""
    import attr
    import bentoml
    from bentoml._internal.bento.bento import BentoInfo
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.utils.args import set_arguments

    if "args" not in attr.fields_dict(BentoInfo):
        raise LookupError("BentoInfo has no `args` field: a Bento no longer stores its arguments")
    before: dict[str, Any] = dict(BentoMLContainer.bento_arguments.get())
    probe = "_service_packed_check"
    set_arguments({probe: 1}, override=False)
    try:
        if getattr(bentoml.use_arguments(), probe, None) != 1:
            raise LookupError("an argument set with set_arguments does not reach bentoml.use_arguments")
    finally:
        BentoMLContainer.bento_arguments.set(before)
