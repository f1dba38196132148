"""Validate a workflow config against its JSON schema and fill in defaults.

The schema is ``workflow/schemas/config.schema.yaml`` plus one file per
section in ``workflow/schemas/sections/`` (``<section>.schema.yaml`` is
plugged in as ``properties.<section>``), so each stage owns its part.
An error names the offending key as a dotted path, e.g.
``evaluation.generation.k: 'five' is not of type 'integer'``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import DetoxflowError


def load_schema(schema_dir: str | Path) -> dict:
    schema_dir = Path(schema_dir)
    main = schema_dir / "config.schema.yaml"
    if not main.is_file():
        raise DetoxflowError(f"config schema not found: {main}")
    schema = yaml.safe_load(main.read_text())
    for part in sorted((schema_dir / "sections").glob("*.schema.yaml")):
        name = part.name[: -len(".schema.yaml")]
        section = yaml.safe_load(part.read_text())
        section.setdefault("default", {})
        schema.setdefault("properties", {})[name] = section
    return schema


def _with_defaults(validator_class):
    """Extend a validator so that missing properties get their schema default.

    Defaults are filled top-down while validating, so a missing section
    defaults to ``{}`` and then receives the defaults of its own keys.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(config: dict[str, Any], schema_dir: str | Path) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it.

    Raises :class:`DetoxflowError` naming every offending key.
    """
    schema = load_schema(schema_dir)
    _coerce_command_line_strings(config, schema)
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            if err.validator == "additionalProperties":
                extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                known = ", ".join(sorted(err.schema.get("properties", {})))
                where = _dotted(err.absolute_path)
                for key in extra:
                    name = f"{where}.{key}" if err.absolute_path else key
                    lines.append(f"{name}: unknown key (allowed here: {known})")
            elif isinstance(err.schema, dict) and err.schema.get("x-no-echo"):
                # a key whose wrong values may be secrets (a pasted API key): say what is
                # expected, never the value
                lines.append(f"{_dotted(err.absolute_path)}: not valid ({err.validator}: "
                             f"{err.validator_value}); {err.schema.get('description', '').strip()}")
            else:
                lines.append(f"{_dotted(err.absolute_path)}: {err.message}")
        raise DetoxflowError("invalid config:\n  " + "\n  ".join(lines))
    _drop_nulled_preprompts(config)
    return config


def _drop_nulled_preprompts(config: dict[str, Any]) -> None:
    """Overlays merge deeply, so a pre-prompt of config.yaml can only be removed by setting it to null."""
    preprompts = config.get("evaluation", {}).get("preprompts")
    if isinstance(preprompts, dict):
        for name in [k for k, v in preprompts.items() if v is None]:
            del preprompts[name]


def _coerce_command_line_strings(config: dict[str, Any], schema: dict, rounds: int = 5) -> None:
    """Turn "0.5", "false", "3" into numbers / booleans where the schema wants those.

    Snakemake parses nested ``--config key='{a: 0.5}'`` values with YAML's base
    loader, which keeps every scalar a string; without this, such an override
    could only fail validation. A string the schema accepts is left alone.
    """
    validator = _Validator(schema)
    for _ in range(rounds):
        changed = False
        for err in validator.iter_errors(config):
            if err.validator != "type" or not isinstance(err.instance, str) or not err.absolute_path:
                continue
            try:
                value = yaml.safe_load(err.instance)
            except yaml.YAMLError:
                continue
            wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            if isinstance(value, str) or not any(validator.is_type(value, t) for t in wanted):
                continue
            *parents, last = err.absolute_path
            holder = config
            for key in parents:
                holder = holder[key]
            holder[last] = value
            changed = True
        if not changed:
            return


def load_config(paths: list[str | Path], schema_dir: str | Path) -> dict[str, Any]:
    """Load YAML files (later ones override earlier ones, deeply) and validate."""
    config: dict[str, Any] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DetoxflowError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DetoxflowError(f"{p}: not valid YAML ({exc})") from None
        deep_update(config, data)
    return validate_config(config, schema_dir)


def deep_update(base: dict, other: dict) -> dict:
    """Merge ``other`` into ``base`` recursively (same semantics as Snakemake's --configfile)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base
