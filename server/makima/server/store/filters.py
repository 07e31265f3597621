"""Filters of lists and streams, each written once as predicates that serve both SQL and rows in memory.

A timeline stream filters events it holds in memory (the tail) with the same rules as the SQL of a
page; a predicate's comparison works on a column (building the WHERE clause) and on a row's value
(testing it), so the two can never disagree.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Table


def _is_in(value: Any, allowed: tuple[Any, ...]) -> Any:
    return value.in_(allowed) if isinstance(value, ColumnElement) else value in allowed


@dataclass(frozen=True)
class Predicate:
    """Keeps the rows whose `column` compares true to the filter's `field` (unset: keeps every row)."""

    field: str
    column: str
    compare: Callable[[Any, Any], Any]


EQUALS, IS_IN, AT_OR_AFTER, BEFORE = operator.eq, _is_in, operator.ge, operator.lt


class Filter:
    """A dataclass of optional fields whose meaning `PREDICATES` gives; None or () leaves a field unset."""

    PREDICATES: ClassVar[tuple[Predicate, ...]] = ()

    @functools.cached_property
    def _set(self) -> tuple[tuple[str, Callable[[Any, Any], Any], Any], ...]:
        """(column, comparison, value) of each field set; worked out once, as streams test every event."""
        return tuple(
            (predicate.column, predicate.compare, value)
            for predicate in self.PREDICATES
            if (value := getattr(self, predicate.field)) is not None and value != ()
        )

    @property
    def keeps_all(self) -> bool:
        """Whether no field is set: every row passes."""
        return not self._set

    def clauses(self, table: Table) -> list[ColumnElement[bool]]:
        """The WHERE clauses of the fields set, over `table`."""
        return [compare(table.c[column], value) for column, compare, value in self._set]

    def matches(self, row: Any) -> bool:
        """Whether a row already in memory passes the same clauses."""
        return all(compare(getattr(row, column), value) for column, compare, value in self._set)
