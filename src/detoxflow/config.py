"""The workflow configuration: read YAML strictly, merge overlays, validate, fill defaults.

One parsing rule for every source. ``config.yaml``, ``--configfile`` overlays
and ``--config`` values are read with :class:`StrictLoader`: a duplicated key
is an error naming the file, line and key (plain YAML keeps the last one
silently), and every plain scalar is resolved with YAML 1.2's core schema
(``1e-5`` is a number, ``null`` is null, ``yes`` is a string). Snakemake hands
nested ``--config`` values over as strings (its YAML base loader keeps every
scalar a string); :func:`resolve_command_line` resolves those strings with the
same rule, so ``--config`` and an overlay file holding the same YAML give the
same config.

The JSON schema (``detoxflow/schema/config.schema.yaml`` plus one
``sections/<section>.schema.yaml`` per stage) owns every default: code asks
:func:`section_defaults` instead of repeating a value. Errors name the key as
a dotted path, e.g. ``evaluation.generation.k: 'five' is not of type 'integer'``.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from .errors import DetoxflowError

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"


# -- YAML ---------------------------------------------------------------------------------------

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and resolves plain scalars by YAML 1.2's core schema."""

    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                source = getattr(self, "source_name", None) or key_node.start_mark.name
                raise DetoxflowError(
                    f"{source}, line {line}: duplicate key '{key}' (first at line {seen[key]}); "
                    f"YAML would keep only the last one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     list("-+.0123456789")),
):
    StrictLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    loader = StrictLoader(text)
    loader.source_name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise DetoxflowError(f"{source}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike) -> Any:
    """Read one YAML file with :class:`StrictLoader`; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise DetoxflowError(f"config file not found: {p}")
    return parse_yaml(p.read_text(), str(p))


def resolve_scalar(text: str) -> Any:
    """A string as a plain YAML scalar would be read in a file: '0.5' -> 0.5, 'null' -> None, 'a b' -> 'a b'."""
    tag = StrictLoader("").resolve(yaml.ScalarNode, text, (True, False))
    if tag == "tag:yaml.org,2002:str":
        return text
    return parse_yaml(text)


def resolve_command_line(values: Mapping) -> tuple[dict, dict[tuple, str]]:
    """``--config`` values as Snakemake parsed them -> what the same YAML in a file gives.

    Snakemake parses nested values with YAML's base loader, which keeps every
    scalar a string; each string is resolved as a plain scalar here. Returns
    the resolved values and, by path, the strings that became something else
    (:func:`resolve_workflow_config` gives a string back where the schema
    wants a string, as for ``revision: "1234"``). Snakemake cannot tell a
    quoted string from a plain one: ``'{a: "null"}'`` arrives as ``null``.
    """
    originals: dict[tuple, str] = {}

    def walk(value, path):
        if isinstance(value, Mapping):
            # keys too: {0: 70GiB} in a file has the key 0
            keys = {k: resolve_scalar(k) if isinstance(k, str) and path else k for k in value}
            return {keys[k]: walk(v, path + (keys[k],)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str):
            resolved = resolve_scalar(value)
            if not isinstance(resolved, str):
                originals[path] = value
            return resolved
        return value

    return walk(dict(values), ()), originals


def _restore_wanted_strings(config: dict, originals: dict[tuple, str], schema: dict) -> None:
    """Where the schema rejects a resolved --config value but accepts its original string, keep the string."""
    validator = _Validator(schema)

    def errors_at(cfg, path):
        return [e for e in validator.iter_errors(copy.deepcopy(cfg)) if tuple(e.absolute_path) == path]

    for path, text in originals.items():
        *parents, last = path
        holder = config
        for key in parents:
            holder = holder[key]
        if not errors_at(config, path):
            continue
        resolved, holder[last] = holder[last], text
        if errors_at(config, path):  # the string is no better: report the resolved value
            holder[last] = resolved


# -- schema -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _load_schema_cached(schema_dir: str) -> dict:
    schema_dir = Path(schema_dir)
    main = schema_dir / "config.schema.yaml"
    if not main.is_file():
        raise DetoxflowError(f"config schema not found: {main}")
    schema = load_yaml(main)
    for part in sorted((schema_dir / "sections").glob("*.schema.yaml")):
        name = part.name[: -len(".schema.yaml")]
        section = load_yaml(part)
        section.setdefault("default", {})
        schema.setdefault("properties", {})[name] = section
    return schema


def load_schema(schema_dir: str | os.PathLike | None = None) -> dict:
    return copy.deepcopy(_load_schema_cached(str(schema_dir or SCHEMA_DIR)))


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


def _closest_alternative(err):
    by_branch: dict[int, list] = {}
    for sub in err.context:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    for subs in by_branch.values():
        if not any(s.validator == "type" for s in subs):  # the value has this alternative's type
            return subs[0]
    return jsonschema.exceptions.best_match(err.context)


def _error_lines(errors) -> list[str]:
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
            # a key whose wrong values may be secrets (a pasted API key): say what is expected, never the value
            lines.append(f"{_dotted(err.absolute_path)}: not valid ({err.validator}: "
                         f"{err.validator_value}); {err.schema.get('description', '').strip()}")
        elif err.validator in ("oneOf", "anyOf") and err.context:
            # name what is wrong in the alternative of the value's type, not "is not valid under any of ..."
            lines.append(f"{_dotted(err.absolute_path)}: {_closest_alternative(err).message}")
        else:
            lines.append(f"{_dotted(err.absolute_path)}: {err.message}")
    return lines


def validate_config(config: dict[str, Any], schema_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it.

    Raises :class:`DetoxflowError` naming every offending key.
    """
    schema = load_schema(schema_dir)
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise DetoxflowError("invalid config:\n  " + "\n  ".join(_error_lines(errors)))
    _drop_nulled_preprompts(config)
    return config


def section_defaults(section: str, schema_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The schema's defaults of one top-level section (e.g. ``dinm``), as a validated config would hold them."""
    config = validate_config({}, schema_dir)
    if section not in config:
        raise DetoxflowError(f"the config schema has no section '{section}'")
    return config[section]


def complete_section(section: str, partial: Mapping | None) -> dict[str, Any]:
    """``partial`` (part of one top-level section, e.g. what a rule passed to a command) with the
    schema's defaults filled in and validated; errors name the key as ``<section>.<key>``."""
    if partial is not None and not isinstance(partial, Mapping):
        raise DetoxflowError(f"{section}: expected a JSON object of settings, got {type(partial).__name__}")
    return validate_config({section: copy.deepcopy(dict(partial or {}))})[section]


def _drop_nulled_preprompts(config: dict[str, Any]) -> None:
    """Overlays merge deeply, so a pre-prompt of config.yaml can only be removed by setting it to null."""
    preprompts = config.get("evaluation", {}).get("preprompts")
    if isinstance(preprompts, dict):
        for name in [k for k, v in preprompts.items() if v is None]:
            del preprompts[name]


# -- putting it together ------------------------------------------------------------------------

def deep_update(base: dict, other: Mapping) -> dict:
    """Merge ``other`` into ``base`` recursively (same semantics as Snakemake's --configfile)."""
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def merge_files(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Later files override earlier ones, deeply; each read by :func:`load_yaml`."""
    config: dict[str, Any] = {}
    for p in paths:
        data = load_yaml(p)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise DetoxflowError(f"{p}: a config file must hold a mapping of keys, got {type(data).__name__}")
        deep_update(config, data)
    return config


def resolve_workflow_config(
    files: Iterable[str | os.PathLike],
    command_line: Mapping | None = None,
    *,
    overrides: Mapping | None = None,
    base_dir: str | os.PathLike | None = None,
    schema_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The config a run uses: ``files`` merged in order, then ``overrides`` (typed values, e.g. a
    module's ``config:``), then ``--config`` values as Snakemake parsed them; validated.

    A relative ``data_root`` is taken relative to ``base_dir`` (the workflow's
    folder), whatever ``--directory`` the workflow runs in.
    """
    config = merge_files(files)
    deep_update(config, overrides or {})
    cli, originals = resolve_command_line(command_line or {})
    deep_update(config, cli)
    if originals:
        _restore_wanted_strings(config, originals, load_schema(schema_dir))
    validate_config(config, schema_dir)
    root = config.get("data_root")
    if root and base_dir is not None and not os.path.isabs(root):
        config["data_root"] = os.path.normpath(os.path.join(base_dir, root))
    return config


def load_config(paths: Iterable[str | os.PathLike], schema_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load YAML files (later ones override earlier ones, deeply) and validate."""
    return validate_config(merge_files(paths), schema_dir)
