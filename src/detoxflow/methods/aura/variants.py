"""Model variants an ``aura`` config section asks for (light: imported by the Snakefile at parse time)."""

from __future__ import annotations

import re

from ...errors import DetoxflowError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def strength_name(strength: float) -> str:
    return "aura" if float(strength) == 1.0 else f"aura_s{float(strength):g}"


def variant_specs(section: dict) -> list[dict]:
    """[{name, method, strength, k?, alpha?}] for AurA (one per strength), Det0 and Damp (one per k)."""
    specs = [{"name": strength_name(s), "method": "aura", "strength": float(s)}
             for s in section.get("strengths", [1.0])]
    det0 = section.get("det0") or {}
    if det0.get("enabled", True):
        specs += [{"name": f"det0_k{int(k)}", "method": "det0", "k": int(k), "strength": 1.0}
                  for k in det0.get("k", [1000])]
    damp = section.get("damp") or {}
    if damp.get("enabled", True):
        alpha = float(damp.get("alpha", 0.5))
        specs += [{"name": f"damp_k{int(k)}", "method": "damp", "k": int(k), "alpha": alpha, "strength": 1.0}
                  for k in damp.get("k", [1000])]
    names = [v["name"] for v in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetoxflowError(f"aura: duplicate variant names {', '.join(dupes)} (repeated strengths or k values)")
    for n in names:
        if not NAME_RE.match(n):
            raise DetoxflowError(f"aura: variant name '{n}' is not a valid model folder name")
    return specs
