"""`LiveTensorBytes`: exact live and peak bytes of the tensors that ATen ops create, on any device (CPU included).

A `TorchDispatchMode` sees every op's outputs; each new storage is counted once (views share it) and released by a
finalizer when its last tensor dies. Tensors that exist before the mode starts (weights, inputs) are not counted,
nor is kernel scratch that never becomes a tensor. Used by the benchmarks and tests to measure loss peaks and the
activations a layer keeps for its backward without a GPU allocator.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by storages created by ATen ops while active (`live`) and their running maximum (`peak`).

    Args:
        exclude: tensors whose storages are never counted: inputs and weights (an op such as `t` returns a view of
            a weight, which is not new memory).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [live tensors, nbytes]
        self.live = 0
        self.peak = 0

    def reset_peak(self) -> None:
        """Start a new peak measurement from the current live bytes."""
        self.peak = self.live

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or key in self._excluded:
            return
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [0, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._storages[key]
            self.live -= entry[1]
