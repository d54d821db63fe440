"""Layer copies that run extra work before or after a UNet layer (for ModelPatcher object patches).

``add_object_patch(path, wrap_layer(layer, hook, "after"))`` puts a shallow copy of ``layer`` in the UNet while
the clone is loaded. The copy's class is a subclass of the layer's own (so the UNet's ``isinstance`` dispatch
still holds) whose ``forward`` runs ``hook`` on the input ("before") or the output ("after") around the
original ``forward``; it shares every parameter and child with ``layer`` (state-dict and LoRA keys are
unchanged), and ``layer`` itself is never modified. ComfyUI puts the original back when the clone is unloaded.
"""
from __future__ import annotations

import copy

import torch

__all__ = ["wrap_layer", "unwrap_layer", "module_at"]

_WRAPPER_CLASSES: dict = {}


def _wrapper_class(cls: type, position: str) -> type:
    key = (cls, position)
    if key not in _WRAPPER_CLASSES:
        if position == "before":
            def forward(self, x, *args, **kwargs):
                return cls.forward(self, self._mvd_hook(x), *args, **kwargs)
        elif position == "after":
            def forward(self, *args, **kwargs):
                return self._mvd_hook(cls.forward(self, *args, **kwargs))
        else:
            raise ValueError(f"position must be 'before' or 'after', got {position!r}")
        _WRAPPER_CLASSES[key] = type(f"MVDiffusion{position.title()}{cls.__name__}", (cls,),
                                     {"forward": forward, "__module__": __name__})
    return _WRAPPER_CLASSES[key]


def wrap_layer(layer: torch.nn.Module, hook, position: str) -> torch.nn.Module:
    """A shallow copy of ``layer`` (of the original behind an earlier copy) that runs ``hook(tensor) -> tensor``
    on its input ("before") or output ("after"). The copy has its own module/parameter dictionaries holding
    the SAME children and tensors as ``layer``."""
    layer = unwrap_layer(layer)
    wrapped = copy.copy(layer)
    for name in ("_modules", "_parameters", "_buffers"):
        wrapped.__dict__[name] = dict(layer.__dict__[name])
    wrapped.__class__ = _wrapper_class(type(layer), position)
    wrapped.__dict__["_mvd_hook"] = hook
    wrapped.__dict__["_mvd_original"] = layer
    return wrapped


def unwrap_layer(layer):
    """The original layer behind a :func:`wrap_layer` copy (or the layer itself)."""
    return layer.__dict__.get("_mvd_original", layer)


def module_at(root, path: str):
    """The submodule at a dotted ``path`` of ``root`` (e.g. "diffusion_model.output_blocks.2.2")."""
    for name in path.split("."):
        root = getattr(root, name)
    return root
