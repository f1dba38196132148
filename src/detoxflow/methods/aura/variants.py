"""Model variants an ``aura`` config section asks for (light: imported by the Snakefile at parse time)."""

from __future__ import annotations

import re

from ...errors import DetoxflowError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def strength_name(strength: float) -> str:
    return "aura" if float(strength) == 1.0 else f"aura_s{float(strength):g}"


def variant_specs(section: dict) -> list[dict]:
    """[{name, method, strength, k, alpha}] for AurA (one per strength), Det0 and Damp (one per k).

    ``section`` is the validated ``aura`` config section (the schema holds the defaults).
    """
    specs = [{"name": strength_name(s), "method": "aura", "strength": float(s), "k": None, "alpha": None}
             for s in section["strengths"]]
    if section["det0"]["enabled"]:
        specs += [{"name": f"det0_k{int(k)}", "method": "det0", "strength": 1.0, "k": int(k), "alpha": None}
                  for k in section["det0"]["k"]]
    if section["damp"]["enabled"]:
        alpha = float(section["damp"]["alpha"])
        specs += [{"name": f"damp_k{int(k)}", "method": "damp", "strength": 1.0, "k": int(k), "alpha": alpha}
                  for k in section["damp"]["k"]]
    names = [v["name"] for v in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetoxflowError(f"aura: duplicate variant names {', '.join(dupes)} (repeated strengths or k values)")
    for n in names:
        if not NAME_RE.match(n):
            raise DetoxflowError(f"aura: variant name '{n}' is not a valid model folder name")
    return specs
