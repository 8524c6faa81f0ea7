"""The one place where Hydra configs become objects, behind target allow-lists.

Two levels of trust:

* **Configs the user composed** (the command line and the `configs/` folder) may name any target in the project's
  packages (`TRUSTED_PREFIXES`) plus any prefix the user adds with the root key `extra_target_prefixes`.
* **Configs read from a file the user was given** (the model config stored in a checkpoint) may only name the
  classes a model is built from (`MODEL_TARGETS`): encoders, connectors, language models, chat templates, visual
  input modes, Hugging Face image processors and the built-in tokenizer. Nothing else is imported or called.

Every nested `_target_` is checked before anything is imported, so a config cannot smuggle a call in a sub-node.
Hydra 1.4 will require an allow-list for `instantiate`; keeping every call behind this function makes that a
one-line change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

TRUSTED_PREFIXES: tuple[str, ...] = ("dc.", "lightning.", "torch.", "transformers.", "timm.", "peft.")
"""Target prefixes allowed in configs the user composed."""

MODEL_TARGETS: tuple[str, ...] = (
    "dc.models.encoders.",
    "dc.models.connectors.",
    "dc.models.llms.",
    "dc.models.visual.",
    "dc.data.tiny_tokenizer.build_tiny_tokenizer",
)
"""Target prefixes allowed in a model config read from a checkpoint (plus image processors, see below)."""

_IMAGE_PROCESSOR_SUFFIXES = ("ImageProcessor", "ImageProcessorFast")


class UntrustedTargetError(ValueError):
    """A config names a target outside the allow-list that applies to it."""


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every `(key path, _target_)` in a config tree (dicts and lists, nested at any depth)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None:
            yield (path or "<root>"), str(target)
        for key, value in node.items():
            yield from iter_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{path}[{i}]")


def is_model_target(target: str) -> bool:
    """Whether `target` may be instantiated from a model config read from a file."""
    if target.startswith(MODEL_TARGETS):
        return True
    parts = target.split(".")
    return len(parts) == 2 and parts[0] == "transformers" and parts[1].endswith(_IMAGE_PROCESSOR_SUFFIXES)


def model_targets(extra: Sequence[str] | None = None) -> Callable[[str], bool]:
    """The allow-list for model configs read from a file: `is_model_target`, plus prefixes the *current* user
    command adds (`extra_target_prefixes`; never a prefix read from the file itself).
    """
    prefixes = tuple(str(p) for p in (extra or ()))
    return lambda target: is_model_target(target) or (bool(prefixes) and target.startswith(prefixes))


def check_targets(cfg: Any, allowed: Callable[[str], bool], source: str = "config") -> None:
    """Raise `UntrustedTargetError` naming the first `_target_` that `allowed` refuses (nothing is imported)."""
    for path, target in iter_targets(cfg):
        if not allowed(target):
            raise UntrustedTargetError(
                f"{source}: `{path}._target_: {target}` is not an allowed target; refusing to build anything from it"
            )


def trusted_prefixes(extra: Sequence[str] | None = None) -> Callable[[str], bool]:
    """The user-config allow-list: the project's packages plus `extra` prefixes."""
    prefixes = TRUSTED_PREFIXES + tuple(str(p) for p in (extra or ()))
    return lambda target: target.startswith(prefixes)


def instantiate(
    cfg: DictConfig | dict,
    *args: Any,
    allowed: Callable[[str], bool] | None = None,
    **kwargs: Any,
) -> Any:
    """Instantiate `cfg` (a node with `_target_`) after checking every nested target against `allowed`.

    Args:
        cfg: the node.
        *args: positional arguments for the target.
        allowed: predicate on target strings; default: `trusted_prefixes()` (user-composed configs).
        **kwargs: Hydra instantiate keyword arguments and overrides.
    """
    target = cfg.get("_target_") if hasattr(cfg, "get") else None
    if target is None:
        raise ValueError(f"config node has no _target_: {cfg}")
    check_targets(cfg, allowed or trusted_prefixes())
    kwargs.setdefault("_convert_", "all")  # plain dicts/lists for library constructors, never DictConfig
    try:
        return hydra.utils.instantiate(cfg, *args, **kwargs)
    except InstantiationException as exc:
        # The constructors' own errors name the config key and the allowed values; Hydra's wrapper only adds
        # "Error in call to target ...". Re-raise the original so callers (and users) get it with its type.
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError, KeyError, OSError)):
            raise cause.with_traceback(cause.__traceback__) from None
        raise
