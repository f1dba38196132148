"""Model variants a ``steering`` config section asks for (light: imported by the Snakefile at parse time).

``iti_c_s<strength>`` / ``actadd_s<coefficient>`` per enabled method and strength (the strength is a
bias multiplier, not bounded by 1, so it is always in the name); each ``compose`` entry
``{start, method, strengths}`` adds ``<start>--<name>``.
"""

from __future__ import annotations

from ...errors import DetoxflowError
from ...stages import VARIANT_NAME, composed_name

METHODS = ("iti_c", "actadd")


def variant_specs(section: dict) -> list[dict]:
    specs = []
    for method in METHODS:
        block = section[method]
        if block["enabled"]:
            specs += [{"name": f"{method}_s{float(s):g}", "start": "base", "method": method, "strength": float(s)}
                      for s in block["strengths"]]
    for entry in section.get("compose", []):
        method = entry["method"]
        strengths = entry.get("strengths") or section[method]["strengths"]
        specs += [{"name": composed_name(entry["start"], f"{method}_s{float(s):g}"), "start": entry["start"],
                   "method": method, "strength": float(s)} for s in strengths]
    names = [v["name"] for v in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetoxflowError(f"steering: duplicate variant names {', '.join(dupes)}")
    for n in names:
        if not VARIANT_NAME.match(n):
            raise DetoxflowError(f"steering: variant name '{n}' is not a valid model folder name")
    return specs
