"""`export.selection` is user text pasted into DuckDB SQL; it must be one boolean expression and nothing more.

DuckDB runs several `;`-separated statements from one string, so an unchecked selection could COPY,
ATTACH, INSTALL or LOAD (issue 14, item 4). The text is parsed by DuckDB's own parser as the WHERE clause of
`SELECT * FROM patches`, and accepted only when the parsed query is exactly that SELECT with a WHERE clause
and no subquery (the one way an expression reaches other tables or table functions such as read_csv).
"""
from __future__ import annotations

import json

_QUERY = "SELECT * FROM patches"


class SelectionError(ValueError):
    """The selection is not one boolean SQL expression over the `patches` columns."""


def _parse(sql: str) -> dict:
    import duckdb

    return json.loads(duckdb.connect().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])


def _without_locations(node):
    if isinstance(node, dict):
        return {k: _without_locations(v) for k, v in node.items() if k != "query_location"}
    if isinstance(node, list):
        return [_without_locations(v) for v in node]
    return node


def _has_subquery(node) -> bool:
    if isinstance(node, dict):
        return node.get("class") == "SUBQUERY" or any(_has_subquery(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_subquery(v) for v in node)
    return False


def check_selection(expression: str) -> str:
    """The expression unchanged, or a SelectionError saying why it cannot be a WHERE clause."""
    if ";" in expression:
        raise SelectionError("one SQL expression only: ';' would start another statement")
    tree = _parse(f"{_QUERY} WHERE ({expression})")
    if tree.get("error"):
        raise SelectionError(f"not a valid SQL expression: {tree.get('error_message')}")
    statements = tree["statements"]
    reference = _without_locations(_parse(_QUERY)["statements"][0]["node"])
    node = _without_locations(statements[0]["node"]) if len(statements) == 1 else {}
    where = node.pop("where_clause", None)
    reference.pop("where_clause", None)
    if where is None or node != reference:
        raise SelectionError("one boolean expression over the `patches` columns only (no UNION, GROUP BY, ORDER BY, LIMIT ...)")
    if _has_subquery(where):
        raise SelectionError("subqueries are not allowed: the expression may use the `patches` columns only")
    return expression
