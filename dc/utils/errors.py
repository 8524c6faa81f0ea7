"""The error a user fixes in their config or command line: the entry points print its message alone."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A value of the config (or of a command's arguments) that cannot work; the message names the key, the value
    and what is expected. Raised before anything is downloaded or read where it can be (`dc.pipeline.validate`),
    else where the value is used. The entry points print it as one line, without a traceback.
    """


def config_number(value: Any, key: str, kind: type[int] | type[float] = float) -> Any:
    """`value` as `kind` (an int must be a whole number; booleans are not numbers).

    Raises:
        ConfigError: naming `key`, for anything else (`generation.temperature=hot`).
    """
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {expected}") from None
    if kind is int:
        if not number.is_integer():
            raise ConfigError(f"{key}={value!r}: expected {expected}")
        return int(number)
    return number


def positive_int(value: Any, key: str, expected: str = "a positive integer") -> int:
    """`value` as an int of at least 1 (`config_number`).

    Raises:
        ConfigError: naming `key` (`key=value: expected <expected>`).
    """
    number = config_number(value, key, int)
    if number < 1:
        raise ConfigError(f"{key}={value!r}: expected {expected}")
    return number


def check_interpolations(cfg: Any) -> None:
    """Every `${...}` of `cfg` resolves (an unset `${oc.env:VAR}`, a key that is not there), checked before the
    values are used, so the failure names the key instead of surfacing as a traceback deep inside a run.
    `${hydra:...}` values are left alone outside a Hydra run (where nothing sets them).

    Raises:
        ConfigError: naming the first key that does not resolve, its value and why.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    hydra_set = HydraConfig.initialized()

    def leaves(node: Any, prefix: str) -> Any:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None:
            yield prefix, node
            return
        for key, value in items:
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))

    failed: list[str] = []
    for key, raw in leaves(OmegaConf.to_container(cfg, resolve=False), ""):
        if not isinstance(raw, str) or "${" not in raw or (not hydra_set and "${hydra:" in raw):
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except InterpolationResolutionError as exc:
            reason = str(exc).strip().splitlines()[0].removeprefix("KeyError raised while resolving interpolation: ")
            failed.append(f"{key}={raw}: cannot be resolved: {reason.strip(chr(34))}")
    if failed:  # the key whose own value calls the resolver that failed (`${oc.env:...}`) before keys using it
        raise ConfigError(next((f for f in failed if "${oc." in f.split(": ")[0]), failed[0]))
