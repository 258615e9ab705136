"""What the visitors of a shared dashboard may load: weight files from allowed folders, models up to a size.

The operator sets it with environment variables, next to ``VIT_EXPLAIN_DATA_DIR`` (the data folder):

- ``VIT_EXPLAIN_WEIGHT_DIRS``: more folders (separated by ``os.pathsep``) whose weight files visitors may
  open, besides the data folder (where uploads go, in ``weights/``, and where the operator puts files);
- ``VIT_EXPLAIN_MAX_PARAMS``: the largest architecture, in parameters, a visitor may load
  (default :data:`DEFAULT_MAX_PARAMS`: ViT-B/16 and DeiT-B fit, ViT-L does not).

A visitor's path is resolved (``..`` and symbolic links followed) before it is compared with the allowed
folders, and a path outside all of them gets the same answer whether or not it exists: the server's
other files stay invisible, their existence as much as their tensor names and shapes. The library and
the command line are not limited: this is the dashboard's policy for the people who open it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .models import HF_PREFIX, ModelLoadError
from .reviews.store import data_dir

WEIGHT_DIRS_ENV = "VIT_EXPLAIN_WEIGHT_DIRS"
MAX_PARAMS_ENV = "VIT_EXPLAIN_MAX_PARAMS"
#: 100 M parameters: ViT-B/16 (86.6 M) and DeiT-B are allowed, ViT-L/16 (304 M) is not.
DEFAULT_MAX_PARAMS = 100_000_000
#: File types a visitor may pick as weights.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class VisitorPolicy:
    """Where visitors' weight files may come from and how large their models may be.

    Attributes:
        data_dir: the server's data folder (resolved); relative weight paths are read in it.
        weight_dirs: every folder weight files may come from (resolved), the data folder first.
        max_params: the largest architecture a visitor may load, in parameters.
    """

    data_dir: Path
    weight_dirs: tuple[Path, ...]
    max_params: int

    @classmethod
    def from_env(cls) -> VisitorPolicy:
        """The policy the environment sets (read on each call, so a changed setting applies at once)."""
        root = data_dir().resolve()
        folders = os.environ.get(WEIGHT_DIRS_ENV, "").split(os.pathsep)
        extra = [Path(p).resolve() for p in folders if p.strip()]
        text = os.environ.get(MAX_PARAMS_ENV, "").replace("_", "").strip()
        try:
            max_params = int(text) if text else DEFAULT_MAX_PARAMS
        except ValueError:
            raise ValueError(f"{MAX_PARAMS_ENV}={text!r} must be a whole number of parameters") from None
        return cls(root, (root, *extra), max_params)

    def weights_path(self, text: str) -> Path:
        """The weight file a visitor names (relative names are in the data folder), or a
        :class:`ModelLoadError` that reveals nothing about files outside the allowed folders."""
        refused = ModelLoadError(
            f"Weights {text!r} refused: weight files come from this server's data folder (uploads, and files "
            f"the operator puts there) or folders the operator allows with {WEIGHT_DIRS_ENV}."
        )
        try:
            path = (self.data_dir / text).resolve()  # an absolute `text` replaces the data folder
        except (OSError, ValueError, RuntimeError):
            raise refused from None
        if not any(path.is_relative_to(folder) for folder in self.weight_dirs):
            raise refused
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise ModelLoadError(f"Weights {text!r}: the file must be a {', '.join(WEIGHT_SUFFIXES)} file.")
        if not path.is_file():
            raise ModelLoadError(f"There is no weights file {text!r} in the allowed folders (uploads go to "
                                 "the data folder's weights/).")
        return path

    def model_spec(self, spec: str) -> str:
        """A visitor's model name, with an ``hf:<folder>`` checked like a weight file: a folder (relative
        names are in the data folder) inside the allowed folders becomes its absolute path; a hub id such as
        ``hf:google/vit-base-patch16-224`` stays (the hub or its cache); any other path is refused with one
        answer, whether or not it exists. timm names and "embedded" are returned unchanged."""
        if not spec.startswith(HF_PREFIX):
            return spec
        text = spec[len(HF_PREFIX) :].strip()
        refused = ModelLoadError(
            f"Model folder {text!r} refused: Hugging Face folders come from this server's data folder or "
            f"folders the operator allows with {WEIGHT_DIRS_ENV}; a hub id looks like "
            "hf:google/vit-base-patch16-224."
        )
        try:
            path = (self.data_dir / text).resolve() if text else None
        except (OSError, ValueError, RuntimeError):
            raise refused from None
        if path is not None and path.is_dir() and any(path.is_relative_to(f) for f in self.weight_dirs):
            return f"{HF_PREFIX}{path}"
        hub_id = text.count("/") <= 1 and not text.startswith((".", "/", "~")) and "\\" not in text
        if text and hub_id and not Path(text).exists():  # never a folder of the server's working directory
            return spec
        raise refused
