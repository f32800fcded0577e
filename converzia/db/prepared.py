"""Prepared reads: an ORM query compiled to SQL once per process and shape, then run with new values.

Building a QuerySet and compiling it costs more Python than the database spends on a hot read: the
balance's two primary-key lookups took ~0.4 ms in PostgreSQL and ~2 ms of `filter()`, `values()` and
`as_sql()` per request (docs/performance.md "Framework overhead"). A `PreparedQuery` keeps the query
written with the ORM, where it is readable and checked, and pays for the ORM once:

    _balance = PreparedQuery(
        "billing.balance",
        lambda tenant_id: TenantCreditBalance.objects.for_tenant(tenant_id).values(*FIELDS)[:1],
    )
    rows = _balance.rows(tenant_id=tenant.pk)     # [{"balance": ..., ...}] or []

On the first call with a given *shape*, the builder runs once with stand-in values of the same types,
the queryset is compiled, and each stand-in is found among the statement's parameters; later calls
bind the real values in their places and run the same SQL text through Django's cursor (so execute
wrappers, debug tooling and the timeout guard see it, and psycopg prepares it server-side once it
repeats). Rows come back as `.values()` would give them, with the same converters applied.

The shape is everything that changes the SQL text rather than a parameter:
- `None` and booleans (an omitted filter, a flag that picks columns);
- the length of a list (`status__in` expands to one parameter per item);
- values wrapped in `Shape(...)` (a LIMIT, an ordering), passed to the builder unwrapped.
Other values (UUIDs, ints, strings, dates, datetimes, decimals) are bound; the builder must treat them
as opaque. One whose stand-in does not reach the parameters as it was given (transformed by a lookup
such as `icontains`, or inlined into the SQL) is refused at compile time: such a query stays an
ordinary queryset.
"""

from __future__ import annotations

import datetime as dt
import decimal
import random
import threading
import uuid
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import QuerySet
from django.db.models.query import ValuesIterable

_BOUND_TYPES = (uuid.UUID, int, str, dt.datetime, dt.date, decimal.Decimal)


@dataclass(frozen=True)
class Shape:
    """A value that is part of the SQL text (a LIMIT, an ordering): one compilation per value."""

    value: Hashable


@dataclass(frozen=True)
class _Slot:
    """Where a statement parameter comes from: a constant, or an argument (an item of it for lists)."""

    constant: Any = None
    argument: str | None = None
    item: int | None = None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    slots: tuple[_Slot, ...]
    names: tuple[str, ...]
    # Column position -> (converters, expression), as Django's compiler applies them.
    converters: dict[int, tuple[list[Callable[..., Any]], Any]]


def _bound_kind(value: Any) -> type | None:
    if isinstance(value, bool):
        return None
    for kind in _BOUND_TYPES:
        if isinstance(value, kind):
            # datetime before date: a datetime is a date too.
            return dt.datetime if isinstance(value, dt.datetime) else kind
    return None


def _stand_in(kind: type, rng: random.Random) -> Any:
    """A value of `kind` that nothing else in a query will equal."""
    if kind is uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)
    if kind is int:
        return rng.randrange(2**52, 2**62)
    if kind is str:
        return f"\ue000prepared-{rng.getrandbits(64):016x}"
    if kind is dt.datetime:
        return dt.datetime(2200, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=rng.getrandbits(40))
    if kind is dt.date:
        return dt.date(2300, 1, 1) + dt.timedelta(days=rng.randrange(1, 200_000))
    return decimal.Decimal(rng.randrange(10**12, 10**15)) / 1000


class PreparedQuery:
    def __init__(self, name: str, build: Callable[..., QuerySet[Any]]) -> None:
        self.name = name
        self.build = build
        self._compiled: dict[Hashable, _Compiled] = {}
        self._lock = threading.Lock()

    def rows(self, *, using: str = DEFAULT_DB_ALIAS, **arguments: Any) -> list[dict[str, Any]]:
        """Every row, as `.values()` dicts (keys as the builder named them)."""
        key = (using, *sorted((name, self._signature(name, value)) for name, value in arguments.items()))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compile(using, arguments)
            with self._lock:
                self._compiled[key] = compiled
        if not compiled.sql:
            return []
        params = [
            slot.constant
            if slot.argument is None
            else (arguments[slot.argument] if slot.item is None else arguments[slot.argument][slot.item])
            for slot in compiled.slots
        ]
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            fetched = cursor.fetchall()
        if compiled.converters:
            fetched = [self._convert(row, compiled.converters, connection) for row in fetched]
        names = compiled.names
        return [dict(zip(names, row, strict=True)) for row in fetched]

    def first(self, *, using: str = DEFAULT_DB_ALIAS, **arguments: Any) -> dict[str, Any] | None:
        rows = self.rows(using=using, **arguments)
        return rows[0] if rows else None

    # --- compilation --------------------------------------------------------------------------------

    def _signature(self, name: str, value: Any) -> Hashable:
        if isinstance(value, Shape):
            return ("shape", value.value)
        if value is None or isinstance(value, bool):
            return ("shape", value)
        kind = _bound_kind(value)
        if kind is not None:
            return ("bound", kind)
        if isinstance(value, list | tuple):
            kinds = tuple(_bound_kind(item) for item in value)
            if None in kinds:
                raise TypeError(f"{self.name}: argument {name!r} holds a value that cannot be bound.")
            return ("list", kinds)
        raise TypeError(f"{self.name}: argument {name!r} of type {type(value).__name__} cannot be bound.")

    def _compile(self, using: str, arguments: dict[str, Any]) -> _Compiled:
        rng = random.Random()
        stand_ins: dict[str, Any] = {}
        sources: list[tuple[Any, _Slot]] = []
        for name, value in arguments.items():
            if isinstance(value, Shape):
                stand_ins[name] = value.value
            elif value is None or isinstance(value, bool):
                stand_ins[name] = value
            elif isinstance(value, list | tuple):
                items = [_stand_in(_bound_kind(item) or str, rng) for item in value]
                stand_ins[name] = type(value)(items)
                sources.extend((item, _Slot(argument=name, item=index)) for index, item in enumerate(items))
            else:
                stand_ins[name] = _stand_in(_bound_kind(value) or str, rng)
                sources.append((stand_ins[name], _Slot(argument=name)))

        queryset = self.build(**stand_ins)
        if not isinstance(queryset, QuerySet) or queryset._iterable_class is not ValuesIterable:
            raise ImproperlyConfigured(f"{self.name}: the builder must return a `.values(...)` queryset.")
        compiler = queryset.query.get_compiler(using=using)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:  # e.g. `status__in=[]`: no statement, no rows
            return _Compiled(sql="", slots=(), names=(), converters={})
        slots = []
        used: set[str] = set()
        for param in params:
            slot = next((slot for stand_in, slot in sources if _same(param, stand_in)), None)
            if slot is None:
                slots.append(_Slot(constant=param))
            else:
                slots.append(slot)
                used.add(f"{slot.argument}:{slot.item}")
        missing = [f"{slot.argument}:{slot.item}" for _, slot in sources]
        missing = [name.removesuffix(":None") for name in missing if name not in used]
        leaked = [name for name, value in stand_ins.items() if isinstance(value, str) and value in sql]
        if missing or leaked:
            raise ImproperlyConfigured(
                f"{self.name}: {', '.join(sorted(set(missing + leaked)))} did not reach the statement as "
                "parameters (transformed by a lookup or inlined): pass them as Shape(...) or do not "
                "prepare this query."
            )
        query = queryset.query
        names = (*query.extra_select, *query.values_select, *query.annotation_select)
        fields = [column[0] for column in compiler.select[: compiler.col_count]]
        return _Compiled(
            sql=sql, slots=tuple(slots), names=tuple(names), converters=compiler.get_converters(fields)
        )

    @staticmethod
    def _convert(
        row: Iterable[Any], converters: dict[int, tuple[list[Callable[..., Any]], Any]], connection: Any
    ) -> tuple[Any, ...]:
        values = list(row)
        for position, (functions, expression) in converters.items():
            value = values[position]
            for function in functions:
                value = function(value, expression, connection)
            values[position] = value
        return tuple(values)


def _same(param: Any, stand_in: Any) -> bool:
    # Exact type and value: a stand-in int must not match True, nor a date a datetime.
    return type(param) is type(stand_in) and param == stand_in
