"""The model-store entries a serving config names, checked before the service starts.

`bentoml serve` and `bentoml build` import service/service.py first; there each model the config names must
be in the model store, and the members of each ensemble must agree on what the service decodes once for all
of them (the input size and resize) and on what their outputs mean (the labels, in order). A mistake stops
the command with one line on stderr and exit status 2, in the process that imports the service, before any
worker starts: a worker that failed instead would be restarted by BentoML over and over, and an ensemble of
mismatched members would answer with a 500 or, worse, with the wrong labels. Each graph must also open and run
on the configured device (service/preflight.py).
"""

from __future__ import annotations

import sys
from typing import Any

from core import metadata
from service import preflight
from service.config import ServingConfig, model_name


class StartUpError(Exception):
    """A config the model store cannot serve."""


def store_path() -> str:
    """The model store in use: $BENTOML_HOME/models, ~/bentoml/models, or a served Bento's own models/."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.model_store.get()._path)


def entries(tags: list[str]) -> dict[str, Any]:
    """The stored model of each tag, by name; a missing one is one line naming the tag, the store and the fix."""
    import bentoml
    from bentoml.exceptions import NotFound

    found = {}
    for tag in tags:
        try:
            found[model_name(tag)] = bentoml.models.get(tag)
        except NotFound:
            raise StartUpError(
                f"Model {tag} could not be found locally: the model store {store_path()} has no {tag} "
                f"(`bentoml models list` shows what it has; python -m export CKPT --store {model_name(tag)} "
                "adds one, and BENTOML_HOME chooses another store)"
            ) from None
    return found


def check_ensembles(config: ServingConfig, metadata_of: dict[str, dict[str, Any]]) -> None:
    """Every member of an ensemble has the first member's labels (in order), crop and resize."""
    for name, ensemble in config.ensembles.items():
        first = ensemble.members[0]
        for member in ensemble.members[1:]:
            why = metadata.member_mismatch(first, metadata_of[first], member, metadata_of[member])
            if why is not None:
                raise StartUpError(f"ensembles.{name}: {why}")


def check_metadata(found: dict[str, Any]) -> None:
    """Every entry's metadata has the keys the service reads (an entry `python -m export --store` did not make
    may lack them)."""
    for model in found.values():
        missing = [k for k in metadata.REQUIRED if k not in model.info.metadata]
        if missing:
            raise StartUpError(
                f"model '{model.tag}' cannot be served: its model-store entry's metadata lacks {', '.join(missing)} "
                f"(not stored by this project): store it with python -m export CKPT --store {model.tag.name}"
            )


def graph_problems(found: dict[str, Any], device: str) -> list[str]:
    """One line for each model whose graph a worker could not serve on `device` (service/preflight.py), or one
    line for a device that cannot run here."""
    graphs = {str(model.tag): model.path_of(metadata.MODEL_FILE) for model in found.values()}
    found_problems = preflight.problems(graphs, device)
    if found_problems["device"] is not None:
        return [
            f"{found_problems['device']}: serve with device: auto or cpu in the serving config, or on a machine "
            "where ONNX Runtime can use the GPU (onnxruntime-gpu, the NVIDIA driver, a visible device)"
        ]
    return [
        f"model '{tag}' cannot be served: {why}; export it again (python -m export CKPT --store "
        f"{model_name(tag)}), or take it out of the serving config"
        for tag, why in found_problems["graphs"].items()
    ]


def load_or_exit(config: ServingConfig, device: str) -> dict[str, Any]:
    """`entries` of the config's models after `check_metadata`, `check_ensembles` and `graph_problems` on
    `device`, or one line on stderr per problem and exit status 2."""
    try:
        found = entries(config.models)
        check_metadata(found)
        check_ensembles(config, {name: model.info.metadata for name, model in found.items()})
    except StartUpError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    lines = graph_problems(found, device)
    if lines:
        print("\n".join(f"error: {line}" for line in lines), file=sys.stderr)
        raise SystemExit(2)
    return found
