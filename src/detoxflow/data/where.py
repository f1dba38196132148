"""A recipe's ``where`` conditions: checked against the columns' types, then applied.

Values are checked when the source is opened, before any row is filtered: a
number column takes numbers, a boolean column booleans, a string column
strings (``in``/``not_in`` lists element by element). So ``value: "1"`` (what
``snakemake --config`` delivers) against an integer column is an error, not
a filter that silently keeps no rows.

The same semantics hold on Python rows (local files, :func:`apply_where`) and
on Arrow tables (hub data sets, :func:`filter_table`): a null cell is unequal
to every value, so it passes ``!=`` and ``not_in`` and fails every other
condition, unless the value itself is null (``== null``, ``in [..., null]``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import reduce
from typing import Any, Iterable

from ..errors import DetoxflowError

OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in")
_ORDER = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

# column kind -> value kinds it can be compared with
_ACCEPTS = {"integer": ("integer", "float"), "float": ("integer", "float"), "bool": ("bool",), "string": ("string",)}
_COLUMN_WORDS = {"integer": "integers", "float": "floats", "bool": "booleans", "string": "strings"}
_VALUE_WORDS = {"integer": "an integer", "float": "a number", "bool": "a boolean", "string": "a string",
                "list": "a list"}


@dataclass(frozen=True)
class ColumnType:
    """What a column holds: ``kind`` (integer, float, bool, string; null when no value was seen,
    mixed when local rows disagree, other for lists and records) and ``detail``, the type as
    the source spells it (``int64``, ``float32``, ``ClassLabel(...)``, ``int``, ``str``)."""

    kind: str
    detail: str
    names: tuple[str, ...] = ()  # class names of a ClassLabel column


def value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


# -- column types -------------------------------------------------------------------------

def python_column_types(rows: Iterable[dict]) -> dict[str, ColumnType]:
    """Column types of Python rows (CSV after pandas typing, JSON after json typing)."""
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        for column, value in row.items():
            kinds = seen.setdefault(column, {})
            if value is not None:
                kinds.setdefault(value_kind(value), type(value).__name__)
    types = {}
    for column, kinds in seen.items():
        detail = " and ".join(sorted(set(kinds.values()))) or "only nulls"
        if not kinds:
            kind = "null"
        elif set(kinds) <= {"integer", "float"}:
            kind = "float" if "float" in kinds else "integer"
        elif len(kinds) == 1 and next(iter(kinds)) in _ACCEPTS:
            kind = next(iter(kinds))
        else:
            kind = "mixed" if all(k in _ACCEPTS for k in kinds) else "other"
        types[column] = ColumnType(kind, detail)
    return types


def _arrow_kind(t) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_null(t):
        return "null"
    return "other"


def _arrow_type_name(t) -> str:
    """The type as a dataset card spells it (Arrow calls float32 "float" and float64 "double")."""
    import pyarrow as pa

    return f"float{t.bit_width}" if pa.types.is_floating(t) else str(t)


def arrow_column_types(table, features=None) -> dict[str, ColumnType]:
    """Column types of an Arrow table; ``features`` (the hub's ``datasets.Features``) names ClassLabels."""
    types = {}
    for field in table.schema:
        feature = (features or {}).get(field.name)
        names = tuple(getattr(feature, "names", None) or ())
        detail = _arrow_type_name(field.type)
        if names:
            detail = f"ClassLabel {detail} ({', '.join(f'{i}={n}' for i, n in enumerate(names))})"
        types[field.name] = ColumnType(_arrow_kind(field.type), detail, names)
    return types


# -- checking -----------------------------------------------------------------------------

def _quote_hint(value: Any, column: ColumnType) -> str:
    if not isinstance(value, str):
        return ""
    if value in column.names:
        return f"; the class '{value}' is number {column.names.index(value)}"
    text = value.strip()
    if text.lower() in ("true", "false") and column.kind == "bool":
        return f"; write {text.lower()} without quotes"
    try:
        float(text)
    except ValueError:
        return ""
    return f"; write {text} without quotes" if column.kind in ("integer", "float") else ""


def _check_value(context: str, cond: dict, column: ColumnType, value: Any, element: int | None) -> None:
    what = f"where {cond['column']} {cond['op']} {cond['value']!r}"
    if element is not None:
        what += f" (element {element})"
    if value is None:
        if cond["op"] in _ORDER:
            raise DetoxflowError(f"{context}: {what}: op '{cond['op']}' needs a value, got null")
        return
    kind = value_kind(value)
    if column.kind == "other":
        raise DetoxflowError(f"{context}: {what}: column '{cond['column']}' holds {column.detail}, "
                             f"where compares numbers, strings and booleans only")
    if column.kind in ("null", "mixed") or kind in _ACCEPTS.get(column.kind, ()):
        return  # nothing typed to check against / compatible
    raise DetoxflowError(
        f"{context}: {what}: column '{cond['column']}' holds {_COLUMN_WORDS[column.kind]} ({column.detail}) "
        f"but the value {value!r} is {_VALUE_WORDS.get(kind, kind)} ({type(value).__name__})"
        f"{_quote_hint(value, column)}"
    )


def check_where(conditions: list[dict], types: dict[str, ColumnType], context: str) -> None:
    """Raise :class:`DetoxflowError` for a malformed condition, a missing column or a mistyped value."""
    for cond in conditions:
        column, op, value = cond.get("column"), cond.get("op"), cond.get("value")
        if op not in OPS:
            raise DetoxflowError(f"{context}: where on '{column}': unknown op {op!r} (one of {', '.join(OPS)})")
        if column not in types:
            raise DetoxflowError(
                f"{context}: no column '{column}' to filter on (columns: {', '.join(sorted(types))})"
            )
        if op in ("in", "not_in"):
            if not isinstance(value, list):
                raise DetoxflowError(f"{context}: where on '{column}': op '{op}' needs a list value, got {value!r}")
            for i, element in enumerate(value):
                _check_value(context, cond, types[column], element, i)
        elif isinstance(value, (list, dict)):
            raise DetoxflowError(f"{context}: where on '{column}': op '{op}' compares with one value, "
                                 f"got {value!r} (use op 'in' for a list)")
        else:
            _check_value(context, cond, types[column], value, None)


# -- applying -----------------------------------------------------------------------------

def _row_matches(cell: Any, op: str, value: Any) -> bool:
    if op == "==":
        return cell == value
    if op == "!=":
        return cell != value
    if op == "in":
        return cell in value
    if op == "not_in":
        return cell not in value
    return cell is not None and _ORDER[op](cell, value)


def apply_where(rows: list[dict], conditions: list[dict], source: str) -> list[dict]:
    """Python rows that meet every condition (checked first against the rows' column types)."""
    if not conditions:
        return rows
    check_where(conditions, python_column_types(rows), source)
    try:
        for cond in conditions:
            column, op, value = cond["column"], cond["op"], cond["value"]
            rows = [r for r in rows if _row_matches(r.get(column), op, value)]
    except TypeError as exc:  # a column of mixed types
        raise DetoxflowError(f"{source}: cannot compare column '{column}' with {value!r}: {exc}") from None
    return rows


def _comparable(column, values: list, kind: str):
    """(column, Arrow type of the values) cast so that Arrow compares as Python does."""
    import pyarrow as pa

    if kind == "float" or (kind == "integer" and any(isinstance(v, float) for v in values)):
        return column.cast(pa.float64()), pa.float64()
    if kind == "integer":
        return column.cast(pa.int64()), pa.int64()
    return column, column.type


def _arrow_condition(column, kind: str, op: str, value: Any):
    import pyarrow as pa
    import pyarrow.compute as pc

    if op in ("in", "not_in"):
        present = [v for v in value if v is not None]
        column, vtype = _comparable(column, present, kind)
        hit = pc.is_in(column, value_set=pa.array(present, type=vtype))  # a null cell: False
        if len(present) < len(value):
            hit = pc.or_(hit, pc.is_null(column))
        return hit if op == "in" else pc.invert(hit)
    if value is None:
        return pc.is_null(column) if op == "==" else pc.is_valid(column)
    column, vtype = _comparable(column, [value], kind)
    compare = {"==": pc.equal, "!=": pc.not_equal, ">": pc.greater, ">=": pc.greater_equal,
               "<": pc.less, "<=": pc.less_equal}[op]
    return pc.fill_null(compare(column, pa.scalar(value, type=vtype)), op == "!=")


def filter_table(table, conditions: list[dict], context: str, features=None):
    """The rows of an Arrow table that meet every condition, computed in Arrow (no Python rows)."""
    import pyarrow.compute as pc

    if not conditions:
        return table
    types = arrow_column_types(table, features)
    check_where(conditions, types, context)
    masks = [_arrow_condition(table.column(c["column"]), types[c["column"]].kind, c["op"], c["value"])
             for c in conditions]
    # filter, not take: ChunkedArray.take concatenates the chunks first (a copy of the whole text column).
    return table.filter(reduce(pc.and_, masks))
