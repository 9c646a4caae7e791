"""The model-store entries a serving config names, checked before the service starts.

`bentoml serve` and `bentoml build` import service/service.py first; there each model the config names must
be in the model store, and the members of each ensemble must agree on what the service decodes once for all
of them (the input size and resize) and on what their outputs mean (the labels, in order). A mistake stops
the command with one line on stderr and exit status 2, in the process that imports the service, before any
worker starts: a worker that failed instead would be restarted by BentoML over and over, and an ensemble of
mismatched members would answer with a 500 or, worse, with the wrong labels.
"""

from __future__ import annotations

import sys
from typing import Any

from core import metadata
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


def load_or_exit(config: ServingConfig) -> dict[str, Any]:
    """`entries` of the config's models after `check_ensembles`, or one line on stderr and exit status 2."""
    try:
        found = entries(config.models)
        check_ensembles(config, {name: model.info.metadata for name, model in found.items()})
    except StartUpError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return found
