"""Module names: patterns that select modules, architecture families, compact listings.

Shared by the methods that choose modules by name (AurA, AcT, the steering baselines).
A pattern is a glob (``*`` within one dotted name component, ``**`` across components,
``{a,b}`` alternatives) or a regular expression prefixed with ``re:``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterable

from .errors import DetoxflowError

# config.model_type -> module-layout family (families sharing the Llama layout included).
ARCHITECTURE_PRESETS: dict[str, str] = {
    "gpt2": "gpt2",
    "falcon": "falcon",
    "mpt": "mpt",
    **{
        t: "llama"
        for t in (
            "llama", "mistral", "mixtral", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3",
            "smollm3", "olmo", "olmo2", "granite", "cohere", "phi3", "starcoder2", "stablelm",
        )
    },
}


def pattern_to_regex(pattern: str) -> re.Pattern:
    """Compile a module pattern (glob with ``*``, ``**``, ``{a,b}``, or ``re:...``) to a regex."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise DetoxflowError(f"module pattern '{pattern}': not a valid regular expression ({exc})") from None
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "{":
            end = pattern.find("}", i)
            if end < 0:
                raise DetoxflowError(f"module pattern '{pattern}': '{{' without a closing '}}'")
            alts = pattern[i + 1:end].split(",")
            out.append("(?:" + "|".join(re.escape(a.strip()) for a in alts) + ")")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def abbreviate_names(names: Iterable[str], limit: int = 40) -> str:
    """Module names with numeric components collapsed to ``*``, deduplicated, in order."""
    seen: "OrderedDict[str, int]" = OrderedDict()
    for name in names:
        if not name:
            continue
        key = ".".join("*" if part.isdigit() else part for part in name.split("."))
        seen[key] = seen.get(key, 0) + 1
    items = [f"{k} (x{n})" if n > 1 else k for k, n in seen.items()]
    more = len(items) - limit
    text = ", ".join(items[:limit])
    return text + (f", ... and {more} more" if more > 0 else "")
