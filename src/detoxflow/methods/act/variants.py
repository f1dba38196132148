"""Model variants an ``act`` config section asks for (light: the Snakefile imports it at parse time).

``<method>`` (strength 1) or ``<method>_s<s>`` per method and strength, started from the base
model; each ``compose`` entry ``{start, method, strengths}`` adds ``<start>--<method>[_s<s>]``,
the same method estimated and folded on the model folder ``start`` (another stage's variant).
"""

from __future__ import annotations

from ...errors import DetoxflowError
from ...stages import VARIANT_NAME, composed_name


def strength_name(method: str, strength: float) -> str:
    return method if float(strength) == 1.0 else f"{method}_s{float(strength):g}"


def variant_specs(section: dict, *, stage: str = "act", methods_key: str = "methods") -> list[dict]:
    """[{name, start, method, strength}] for every method x strength, then every composition."""
    specs = [{"name": strength_name(m, s), "start": "base", "method": m, "strength": float(s)}
             for m in section[methods_key] for s in section["strengths"]]
    for entry in section.get("compose", []):
        strengths = entry.get("strengths") or section["strengths"]
        specs += [{"name": composed_name(entry["start"], strength_name(entry["method"], s)), "start": entry["start"],
                   "method": entry["method"], "strength": float(s)} for s in strengths]
    names = [v["name"] for v in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetoxflowError(f"{stage}: duplicate variant names {', '.join(dupes)}")
    for n in names:
        if not VARIANT_NAME.match(n):
            raise DetoxflowError(f"{stage}: variant name '{n}' is not a valid model folder name")
    return specs


def estimations(specs: list[dict]) -> list[tuple[str, str]]:
    """The (start, method) pairs whose maps must be estimated (one estimation serves every strength)."""
    return list(dict.fromkeys((v["start"], v["method"]) for v in specs))
