"""Variant names of the act and steering sections (what the Snakefile registers)."""

from __future__ import annotations

import pytest

from detoxflow.config import complete_section
from detoxflow.errors import DetoxflowError
from detoxflow.methods.act.variants import estimations, variant_specs
from detoxflow.methods.steering.variants import variant_specs as steering_specs


def test_act_names_strengths_and_compositions():
    section = complete_section("act", {"strengths": [0.5, 1.0],
                                       "compose": [{"start": "aura", "method": "linear_act", "strengths": [1.0]},
                                                   {"start": "linear_act", "method": "mean_act"}]})
    specs = variant_specs(section)
    assert [v["name"] for v in specs] == ["linear_act_s0.5", "linear_act", "mean_act_s0.5", "mean_act",
                                          "aura--linear_act", "linear_act--mean_act_s0.5", "linear_act--mean_act"]
    assert estimations(specs) == [("base", "linear_act"), ("base", "mean_act"), ("aura", "linear_act"),
                                  ("linear_act", "mean_act")]
    with pytest.raises(DetoxflowError, match="duplicate"):
        variant_specs(complete_section("act", {"strengths": [1.0, 1]}))


def test_steering_names_and_schema_defaults():
    specs = steering_specs(complete_section("steering", {"compose": [{"start": "aura", "method": "iti_c"}]}))
    assert [v["name"] for v in specs] == ["iti_c_s5", "actadd_s5", "aura--iti_c_s5"]
    specs = steering_specs(complete_section("steering", {"actadd": {"enabled": False}}))
    assert [v["name"] for v in specs] == ["iti_c_s5"]
    with pytest.raises(DetoxflowError, match="unknown|not valid|additional|iti"):
        complete_section("steering", {"iti_c": {"top_n": 3}})
