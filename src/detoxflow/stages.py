"""The stage interface of the workflow: how a stage joins the DAG.

Each rule file under ``rules/`` that adds to the comparison declares one
:class:`Stage`, and only through it:

* ``variants``: model folders ``results/models/<variant>`` the stage writes;
  every one goes through the one evaluation and gets a row in the summary;
* ``model_metrics``: per-model metric files (patterns with ``{model}``) that the
  stage computes for every evaluated model (e.g. SafeEdit, capability); their
  ``metrics`` become columns of that model's rows;
* ``targets``: further files the default target builds and the report shows
  (plots, tables of the stage's own).

:class:`StageRegistry` collects them (in the order the rule files are
included), refuses a name used twice, and answers what the evaluation and the
summary need. Pure Python: the Snakefile imports it; nothing here imports
Snakemake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from .errors import DetoxflowError

#: model folder names (a variant's name is its folder under results/models)
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
#: between the start model and the variant in the name of a composed variant (``aura--linear_act``)
CHAIN_SEP = "--"


def composed_name(start: str, name: str) -> str:
    """The folder name of variant ``name`` of a method started from model ``start`` (plain for ``base``)."""
    return name if start == "base" else f"{start}{CHAIN_SEP}{name}"


@dataclass(frozen=True)
class Stage:
    name: str
    variants: tuple[str, ...] = ()
    model_metrics: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    def __post_init__(self):
        for field in ("variants", "model_metrics", "targets"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        for v in self.variants:
            if not VARIANT_NAME.match(v):
                raise DetoxflowError(f"stage {self.name}: variant name '{v}' is not a valid model folder name "
                                     f"(letters, digits, _ . -)")
        for pattern in self.model_metrics:
            if "{model}" not in pattern:
                raise DetoxflowError(f"stage {self.name}: model metric pattern '{pattern}' lacks {{model}}")


class StageRegistry:
    """The stages of one workflow run, in registration order."""

    def __init__(self, stages: Iterable[Stage] = ()):
        self._stages: dict[str, Stage] = {}
        for stage in stages:
            self.add(stage)

    def add(self, stage: Stage) -> Stage:
        if stage.name in self._stages:
            raise DetoxflowError(f"stage '{stage.name}' is registered twice")
        owner = {v: s.name for s in self._stages.values() for v in s.variants}
        for v in stage.variants:
            if v in owner:
                raise DetoxflowError(f"variant '{v}' of stage {stage.name} is also a variant of stage {owner[v]}")
        if len(set(stage.variants)) != len(stage.variants):
            raise DetoxflowError(f"stage {stage.name} lists a variant twice: {list(stage.variants)}")
        self._stages[stage.name] = stage
        return stage

    def __contains__(self, name: str) -> bool:
        return name in self._stages

    def __iter__(self):
        return iter(self._stages.values())

    def names(self) -> list[str]:
        return list(self._stages)

    def variants(self) -> list[str]:
        """Every model variant that the evaluation evaluates, in registration order."""
        return [v for s in self._stages.values() for v in s.variants]

    def model_metrics(self, model: str) -> list[str]:
        """The per-model metric files of ``model`` that the summary merges into its rows."""
        return [p.format(model=model) for s in self._stages.values() for p in s.model_metrics]

    def targets(self) -> list[str]:
        return [t for s in self._stages.values() for t in s.targets]
