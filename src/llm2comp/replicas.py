"""Multi-device encoding: inference copies of a model on several devices, one thread each (opt-in through
`LLM2Comp.encode(..., devices=[...])`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

_LOCK = threading.Lock()  # threads encoding at once must neither copy the model twice nor clear each other's cache


def model_replicas(self, devices: Sequence[str | torch.device]) -> list:
    """Inference copies of the model `self` on ``devices`` (the model itself for its own device), cached on it until
    the weights change (a new adapter, a merge); `LLM2Comp.clear_replicas()` forgets them."""
    import copy

    key = tuple(str(torch.device(d)) for d in devices)
    with _LOCK:
        cache = self.__dict__.setdefault("_replica_cache", {})
        if key not in cache:
            cache.clear()
            replicas = []
            for device in key:
                if torch.device(device) == self.device and not any(r is self for r in replicas):
                    replicas.append(self)
                else:
                    clone = copy.deepcopy(self).to(device).eval()
                    clone.__dict__["_replica_cache"] = {}
                    replicas.append(clone)
            cache[key] = replicas
        return cache[key]
