"""Which modules' outputs AurA records and dampens.

Modules are chosen by name patterns over ``model.named_modules()``:

* a glob: ``*`` matches within one dotted name component (``transformer.h.*.mlp.c_fc``),
  ``**`` matches across components, ``{a,b}`` gives alternatives
  (``model.layers.*.mlp.{up_proj,gate_proj}``);
* a regular expression, prefixed with ``re:`` (matched against the whole name).

``modules`` in the config is ``auto`` (preset from the model's architecture,
falling back to every Linear/Conv1D inside an MLP block), a preset name, or a
list of patterns. Every selected module must be an ``nn.Linear`` or GPT-2
``Conv1D``: then scaling its output equals scaling its output rows (columns
for Conv1D) and bias, so the intervention can be folded into the weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from ...errors import DetoxflowError
from ...module_names import ARCHITECTURE_PRESETS, abbreviate_names, pattern_to_regex  # noqa: F401  (re-exported)

# Presets: the modules the AurA paper intervenes on, per model family.
PRESETS: dict[str, list[str]] = {
    "gpt2": ["transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj"],
    "llama": ["model.layers.*.mlp.up_proj", "model.layers.*.mlp.gate_proj", "model.layers.*.mlp.down_proj"],
    "falcon": ["transformer.h.*.mlp.dense_h_to_4h", "transformer.h.*.mlp.dense_4h_to_h"],
    "mpt": ["transformer.blocks.*.ffn.up_proj", "transformer.blocks.*.ffn.down_proj"],
}
PRESETS["mistral"] = PRESETS["llama"]
PRESETS["gemma"] = PRESETS["llama"]

# Names of MLP blocks used by the architecture-agnostic fallback.
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "feedforward", "fc")


def _is_conv1d(module: torch.nn.Module) -> bool:
    """GPT-2 style Conv1D (weight stored [in, out]); detected without importing transformers internals."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_foldable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or _is_conv1d(module)


def output_units(module: torch.nn.Module) -> int:
    """Number of output units ("neurons") of a Linear / Conv1D module."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if _is_conv1d(module):
        return int(module.nf)
    raise DetoxflowError(f"module of type {type(module).__name__} has no known number of output units")


def default_patterns(model: torch.nn.Module) -> list[str]:
    """Patterns for ``modules: auto``: the family preset, else every Linear/Conv1D in an MLP block."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    preset = ARCHITECTURE_PRESETS.get(model_type or "")
    if preset is not None:
        patterns = PRESETS[preset]
        names = {n for n, _ in model.named_modules()}
        if all(any(pattern_to_regex(p).fullmatch(n) for n in names) for p in patterns):
            return list(patterns)
    # Fallback: Linear/Conv1D children of a module named like an MLP, inside a numbered layer.
    found = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if not is_foldable(module) or len(parts) < 3:
            continue
        if parts[-2] in _MLP_NAMES and any(p.isdigit() for p in parts[:-2]):
            found.append(".".join("*" if p.isdigit() else p for p in parts))
    patterns = list(OrderedDict.fromkeys(found))
    if not patterns:
        raise DetoxflowError(
            f"aura.modules: auto found no MLP Linear layers in this model (model_type '{model_type}'); "
            f"set aura.modules to a list of patterns. Modules: {abbreviate_names(n for n, _ in model.named_modules())}"
        )
    return patterns


def resolve_patterns(spec: str | Sequence[str], model: torch.nn.Module) -> list[str]:
    """Turn the config value (``auto``, a preset name, or patterns) into a list of patterns."""
    if isinstance(spec, str):
        if spec == "auto":
            return default_patterns(model)
        if spec in PRESETS:
            return list(PRESETS[spec])
        return [spec]
    patterns = list(spec)
    if not patterns:
        raise DetoxflowError("aura.modules is an empty list: give 'auto', a preset name or module patterns")
    return patterns


def select_modules(
    model: torch.nn.Module,
    spec: str | Sequence[str],
    *,
    require_foldable: bool = True,
) -> "OrderedDict[str, torch.nn.Module]":
    """Modules matching the patterns, in the model's module order.

    Raises :class:`DetoxflowError` for a pattern that matches nothing (listing the
    modules that exist) and, with ``require_foldable``, for a match that is not
    a Linear/Conv1D or whose weight is tied to another parameter (e.g. a tied
    ``lm_head``), because folding into it would change the tied tensor too.
    """
    patterns = resolve_patterns(spec, model)
    named = [(n, m) for n, m in model.named_modules() if n]
    selected: "OrderedDict[str, torch.nn.Module]" = OrderedDict()
    for pattern in patterns:
        regex = pattern_to_regex(pattern)
        hits = [(n, m) for n, m in named if regex.fullmatch(n)]
        if not hits:
            model_type = getattr(getattr(model, "config", None), "model_type", "?")
            raise DetoxflowError(
                f"aura.modules: pattern '{pattern}' matches no module of this {model_type} model. "
                f"Known presets: {', '.join(sorted(PRESETS))}. Modules that exist "
                f"(digits shown as *): {abbreviate_names(n for n, _ in named)}"
            )
        for n, m in hits:
            selected[n] = m
    # Keep the model's own order (patterns may interleave).
    order = {n: i for i, (n, _) in enumerate(named)}
    selected = OrderedDict(sorted(selected.items(), key=lambda kv: order[kv[0]]))
    if require_foldable:
        bad = [f"{n} ({type(m).__name__})" for n, m in selected.items() if not is_foldable(m)]
        if bad:
            raise DetoxflowError(
                "aura.modules selects modules that are not Linear/Conv1D layers, so their output cannot be "
                f"folded into weights: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. "
                "Select the linear layers themselves (e.g. transformer.h.*.mlp.c_fc, not .act)."
            )
        shared = tied_parameters(model)
        tied = [n for n, m in selected.items() if id(m.weight) in shared]
        if tied:
            raise DetoxflowError(
                f"aura.modules selects modules whose weight is tied to another parameter: {', '.join(tied)} "
                f"(tied with {', '.join(sorted({x for n in tied for x in shared[id(selected[n].weight)]}))}). "
                "Dampening them would also change the tied tensor (e.g. the input embeddings); drop them from "
                "the patterns."
            )
    return selected


def tied_parameters(model: torch.nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> all its names, for parameters reachable under more than one name."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    # Also catch distinct Parameter objects sharing storage.
    by_ptr: dict[tuple, list[int]] = {}
    params = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    for pid, p in params.items():
        if p.device.type != "meta":
            by_ptr.setdefault((p.device, p.data_ptr(), tuple(p.shape)), []).append(pid)
    for ids in by_ptr.values():
        if len(ids) > 1:
            merged = [n for i in ids for n in names[i]]
            for i in ids:
                names[i] = merged
    return {pid: ns for pid, ns in names.items() if len(ns) > 1}


def layer_index(name: str) -> int | None:
    """The first numeric component of a module name (its layer), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def module_kind(name: str) -> str:
    """A module name with its layer index replaced by ``*`` (e.g. ``model.layers.*.mlp.up_proj``)."""
    return ".".join("*" if p.isdigit() else p for p in name.split("."))
