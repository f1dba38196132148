"""AcT at run time: forward hooks applying the maps (with the reference's quantile clipping).

Used for incremental estimation (earlier modules' maps active while the next module is
recorded, as apple/ml-act does) and to check the folded checkpoint against the hooked
intervention.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch

from .estimators import TransportMap, apply_map


def attach(model: torch.nn.Module, maps: Mapping[str, TransportMap], strength: float, *, clip: bool = True) -> list:
    handles = []
    for name, tmap in maps.items():
        def hook(_m, _i, output, tmap=tmap):
            return apply_map(output, tmap, strength, clip=clip)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def transport_hooks(model: torch.nn.Module, maps: Mapping[str, TransportMap], strength: float = 1.0,
                    *, clip: bool = True) -> Iterator[torch.nn.Module]:
    handles = attach(model, maps, strength, clip=clip)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
