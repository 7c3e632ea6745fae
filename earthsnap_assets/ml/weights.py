"""Where a network's starting weights come from, and proof of which ones it got (lineage).

A species team fine-tunes: a backbone pretrained on millions of photos learns a group's species from tens of
photos each, where the same network from scratch does not. Every source ends as a safetensors state dict
whose sha256 is recorded next to the model, so a registered version names the exact bytes it started from.

Sources (the `weights` setting of a model):
  ``none``                          random initialisation
  ``timm:<model>[.<tag>]``          timm's pretrained weights for that name (its Hugging Face repo), and
  ``hf-hub:<org>/<repo>``           a Hugging Face repo's ``model.safetensors``: both read from the local
                                    Hugging Face cache; a download only when explicitly allowed (the platform
                                    runs offline: pods pre-fill the cache, or use a URI)
  ``s3://bucket/key.safetensors``   a state dict in object storage (read through the caller's store)
  ``/path/x.safetensors``, ``file://…``  a local file

Safetensors, not pickles: loading a `.pt` from a URI runs arbitrary code, loading safetensors cannot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

NONE = "none"
HUB_FILENAME = "model.safetensors"
MIN_MATCHED_SHARE = 0.9  # of the backbone's tensors (head excluded); fewer means weights of another network

ReadUri = Callable[[str], bytes]


class WeightsError(ValueError):
    """The configured weights cannot be found, read or loaded into the configured backbone."""


@dataclass(frozen=True)
class Pretrained:
    """A state dict and where it came from: what lineage records (`source`, `sha256` of the file's bytes)."""

    state_dict: dict[str, torch.Tensor]
    sha256: str
    source: str

    def lineage(self, prefix: str = "weights") -> dict[str, str]:
        return {f"{prefix}_source": self.source, f"{prefix}_sha256": self.sha256}


@dataclass(frozen=True)
class LoadReport:
    """What `apply` did: tensors loaded, head tensors left to their fresh initialisation, shapes that differ."""

    loaded: int
    reinitialised_head: tuple[str, ...]
    missing: tuple[str, ...]


def kind_of(source: str) -> str:
    """`none`, `hub`, `s3` or `file`; an unknown form is an error, not a silent random start."""
    if source == NONE or not source:
        return NONE
    if source.startswith(("timm:", "hf-hub:")):
        return "hub"
    if source.startswith("s3://"):
        return "s3"
    if source.startswith("file://") or source.startswith("/") or source.startswith("./"):
        return "file"
    raise WeightsError(
        f"unknown weights source {source!r}: use 'none', 'timm:<model>', 'hf-hub:<org>/<repo>', "
        "'s3://bucket/key.safetensors' or a path to a .safetensors file"
    )


def hub_repo(source: str) -> str:
    """The Hugging Face repo id a hub source names (timm names resolve through timm's pretrained config)."""
    if source.startswith("hf-hub:"):
        repo = source.removeprefix("hf-hub:")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise WeightsError(f"{source!r} is not 'hf-hub:<org>/<repo>'")
        return repo
    from timm.models import get_pretrained_cfg

    name = source.removeprefix("timm:")
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:  # unknown architecture or tag
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"timm has no Hugging Face weights for {name!r} (see timm.list_pretrained())")
    return cfg.hf_hub_id


def _hub_file(source: str, cache_dir: str | Path | None, allow_download: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = hub_repo(source)
    try:
        return Path(hf_hub_download(repo, HUB_FILENAME, cache_dir=cache_dir, local_files_only=not allow_download))
    except LocalEntryNotFoundError as exc:
        raise WeightsError(
            f"{source!r} ({repo}/{HUB_FILENAME}) is not in the local Hugging Face cache"
            f"{f' at {cache_dir}' if cache_dir else ''}; pre-fill the cache (`huggingface-cli download {repo}`), "
            "point `weights` at an s3:// copy, or allow downloads"
        ) from exc


def read_bytes(
    source: str, read_uri: ReadUri | None = None, *, cache_dir: str | Path | None = None, allow_download: bool = False
) -> bytes:
    """The safetensors bytes a source names."""
    kind = kind_of(source)
    if kind == "hub":
        return _hub_file(source, cache_dir, allow_download).read_bytes()
    if kind == "s3":
        if read_uri is None:
            raise WeightsError(f"{source!r} needs an object store to read from")
        try:
            return read_uri(source)
        except Exception as exc:
            raise WeightsError(f"cannot read weights {source!r}: {exc}") from exc
    if kind == "file":
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return path.read_bytes()
    raise WeightsError("'none' has no bytes")


def load(
    source: str, read_uri: ReadUri | None = None, *, cache_dir: str | Path | None = None, allow_download: bool = False
) -> Pretrained | None:
    """The weights a source names (None for `none`), with the sha256 of the exact bytes read."""
    if kind_of(source) == NONE:
        return None
    data = read_bytes(source, read_uri, cache_dir=cache_dir, allow_download=allow_download)
    return from_bytes(data, source)


def from_bytes(data: bytes, source: str) -> Pretrained:
    try:
        state = load_safetensors(data)
    except Exception as exc:
        raise WeightsError(f"{source!r} is not a safetensors state dict: {exc}") from exc
    return Pretrained(state, hashlib.sha256(data).hexdigest(), source)


def to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """A state dict as safetensors bytes (contiguous CPU tensors; shared storage is copied apart)."""
    return save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()})


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the classifier head, re-initialised for the task's own classes."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "fc"
    names = classifier if isinstance(classifier, list | tuple) else [classifier]
    return tuple(f"{name}." for name in names)


def apply(model: nn.Module, pretrained: Pretrained) -> LoadReport:
    """Load every backbone tensor of `pretrained` into `model`; the head keeps its fresh initialisation.

    Names and shapes must match (same architecture); a state dict that fits less than 90% of the backbone is
    another network's and an error, not a quiet partial load.
    """
    heads = head_prefixes(model)
    own = model.state_dict()
    backbone = {k for k in own if not k.startswith(heads)}
    fits = {k: v for k, v in pretrained.state_dict.items() if k in backbone and tuple(v.shape) == tuple(own[k].shape)}
    if not backbone or len(fits) < MIN_MATCHED_SHARE * len(backbone):
        raise WeightsError(
            f"weights {pretrained.source!r} fit {len(fits)} of {len(backbone)} backbone tensors of "
            f"{type(model).__name__}: they belong to another architecture"
        )
    model.load_state_dict(fits, strict=False)
    return LoadReport(
        loaded=len(fits),
        reinitialised_head=tuple(sorted(k for k in own if k.startswith(heads))),
        missing=tuple(sorted(backbone - fits.keys())),
    )
