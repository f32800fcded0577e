"""Keyset (cursor) pagination: every page costs one indexed range scan, however deep (API.md "Pagination").

The page after a row is `WHERE (k1, k2) < (v1, v2) ORDER BY k1 DESC, k2 DESC LIMIT n + 1`, written as
`k1 <= v1 AND (k1 < v1 OR (k1 = v1 AND k2 < v2))`: the first conjunct is an index range condition, so
PostgreSQL starts the scan at the cursor (instead of filtering from the top); the rest only re-checks
rows that tie on `k1`. No OFFSET anywhere (DRF's CursorPagination falls back to offsets for ties).

The cursor is the last row's sort-key values, as base64url JSON, signed so that a tampered cursor is a
400 rather than a silently different page. The sort key must end with a unique column (`id`), so the
key is a total order and every row is listed exactly once, ties included.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.core import signing
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Field, Model, Q, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from converzia.db.prepared import PreparedQuery, Shape

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool

    @classmethod
    def parse(cls, spec: str) -> SortKey:
        return cls(field=spec.removeprefix("-"), descending=spec.startswith("-"))

    def reversed(self) -> SortKey:
        return SortKey(field=self.field, descending=not self.descending)

    def order_by(self) -> str:
        return f"-{self.field}" if self.descending else self.field


@dataclass(frozen=True)
class Cursor:
    values: tuple[Any, ...]
    # True: the rows *before* `values` (a "previous" link); False: the rows after it.
    backwards: bool


def keyset_filter(keys: Sequence[SortKey], values: Sequence[Any]) -> Q:
    """Rows strictly after `values` in the order `keys` (see the module docstring for the shape)."""
    first = keys[0]
    bound = Q(**{f"{first.field}__{'lte' if first.descending else 'gte'}": values[0]})
    after = Q()
    for position, key in enumerate(keys):
        ties = {keys[index].field: values[index] for index in range(position)}
        after |= Q(**ties, **{f"{key.field}__{'lt' if key.descending else 'gt'}": values[position]})
    return bound & after


@dataclass(frozen=True)
class PageRequest:
    keys: tuple[SortKey, ...]
    fields: tuple[Field, ...]
    scan_order: tuple[str, ...]  # `order_by()` arguments in the direction the scan runs
    after: tuple[Any, ...] | None  # the cursor's sort-key values; None: from the start
    backwards: bool
    page_size: int

    @property
    def limit(self) -> int:
        return self.page_size + 1  # one more row tells whether another page follows


def keyset_page(
    queryset: QuerySet[Any], order: Sequence[str], after: Sequence[Any] | None, limit: int
) -> QuerySet[Any]:
    """The rows after `after` (none: from the start) in `order`, at most `limit` of them."""
    queryset = queryset.order_by(*order)
    if after is not None:
        queryset = queryset.filter(keyset_filter([SortKey.parse(spec) for spec in order], after))
    return queryset[:limit]


class KeysetPagination(BasePagination):
    """`?page_size=` (1..200, default 50) and an opaque `?cursor=`; body `{results, next, previous}`.

    A view picks its sort key with `keyset_ordering` (default newest first: `("-created_at", "-id")`).
    Sort-key columns must be non-null model fields.
    """

    ordering: tuple[str, ...] = ("-created_at", "-id")
    page_size = DEFAULT_PAGE_SIZE
    max_page_size = MAX_PAGE_SIZE
    cursor_query_param = "cursor"
    page_size_query_param = "page_size"

    def __init__(self) -> None:
        self.request: Request | None = None
        self.next_cursor: str | None = None
        self.previous_cursor: str | None = None

    @property
    def query_params(self) -> frozenset[str]:
        """The query parameters this paginator owns (the base view allows them on list actions)."""
        return frozenset({self.cursor_query_param, self.page_size_query_param})

    # --- DRF pagination interface ------------------------------------------------------------------

    def paginate_queryset(self, queryset: QuerySet[Any], request: Request, view: Any = None) -> list[Any]:
        page = self.page_request(queryset.model, request, view)
        return self.page_rows(list(keyset_page(queryset, page.scan_order, page.after, page.limit)), page)

    def paginate_prepared(
        self, query: PreparedQuery, model: type[Model], request: Request, view: Any = None, **arguments: Any
    ) -> list[dict[str, Any]]:
        """A page from a prepared query whose builder ends with `keyset_page(queryset, order, after,
        limit)` (converzia.db.prepared): the same page as `paginate_queryset`, without the ORM."""
        page = self.page_request(model, request, view)
        rows = query.rows(
            **arguments, order=Shape(page.scan_order), after=page.after, limit=Shape(page.limit)
        )
        return self.page_rows(rows, page)

    def page_request(self, model: type[Model], request: Request, view: Any = None) -> PageRequest:
        """What the request asks for: the sort key, the cursor and the page size (400 if invalid)."""
        self.request = request
        keys = self._sort_keys(model, view)
        fields = [model._meta.get_field(key.field) for key in keys]
        page_size = self._page_size(request)
        cursor = self._decode(request.query_params.get(self.cursor_query_param), keys, fields)
        backwards = cursor is not None and cursor.backwards
        scan_keys = [key.reversed() for key in keys] if backwards else keys
        return PageRequest(
            keys=tuple(keys),
            fields=tuple(fields),
            scan_order=tuple(key.order_by() for key in scan_keys),
            after=cursor.values if cursor is not None else None,
            backwards=backwards,
            page_size=page_size,
        )

    def page_rows(self, rows: list[Any], page: PageRequest) -> list[Any]:
        """The page's rows in display order from the scan's `page_size + 1`; sets the cursors."""
        more_in_scan_direction = len(rows) > page.page_size
        rows = rows[: page.page_size]
        if page.backwards:
            rows.reverse()

        # Going forwards, rows precede the page iff we came from a cursor; going backwards, rows follow
        # the page (at least the cursor's own row) and precede it iff the scan found one more.
        has_next = True if page.backwards else more_in_scan_direction
        has_previous = more_in_scan_direction if page.backwards else page.after is not None
        self.next_cursor = (
            self._encode(rows[-1], page.fields, page.keys, backwards=False) if rows and has_next else None
        )
        self.previous_cursor = (
            self._encode(rows[0], page.fields, page.keys, backwards=True) if rows and has_previous else None
        )
        return rows

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link(), "previous": self.get_previous_link()})

    def get_next_link(self) -> str | None:
        return self._link(self.next_cursor)

    def get_previous_link(self) -> str | None:
        return self._link(self.previous_cursor)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "format": "uri", "nullable": True}
        return {
            "type": "object",
            "required": ["results", "next", "previous"],
            "properties": {"results": schema, "next": link, "previous": link},
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Opaque cursor from a previous page's `next` or `previous` link.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Rows per page (1-{self.max_page_size}, default {self.page_size}).",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                },
            },
        ]

    # --- helpers -------------------------------------------------------------------------------------

    def _sort_keys(self, model: type[Model], view: Any) -> list[SortKey]:
        ordering = getattr(view, "keyset_ordering", None) or self.ordering
        keys = [SortKey.parse(spec) for spec in ordering]
        try:
            last = model._meta.get_field(keys[-1].field)
        except FieldDoesNotExist as exc:
            raise ImproperlyConfigured(f"Keyset ordering {ordering!r}: {exc}") from exc
        if not (last.primary_key or last.unique):
            raise ImproperlyConfigured(f"Keyset ordering {ordering!r} must end with a unique field.")
        return keys

    def _page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return size

    def _signer(self, keys: Sequence[SortKey]) -> signing.Signer:
        # The sort key is part of the salt: a cursor only works with the ordering that produced it.
        salt = "converzia.keyset:" + ",".join(key.order_by() for key in keys)
        return signing.Signer(salt=salt, sep=".")

    def _encode(self, row: Any, fields: Sequence[Field], keys: Sequence[SortKey], *, backwards: bool) -> str:
        values = [_to_json(_row_value(row, field)) for field in fields]
        payload = orjson.dumps({"b": int(backwards), "v": values})
        encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")
        return self._signer(keys).sign(encoded)

    def _decode(self, raw: str | None, keys: Sequence[SortKey], fields: Sequence[Field]) -> Cursor | None:
        if raw is None:
            return None
        invalid = ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        try:
            encoded = self._signer(keys).unsign(raw)
            payload = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
            values = payload["v"]
            if not isinstance(values, list) or len(values) != len(fields) or payload["b"] not in (0, 1):
                raise invalid
            parsed = tuple(field.to_python(value) for field, value in zip(fields, values, strict=True))
        except (signing.BadSignature, binascii.Error, orjson.JSONDecodeError, KeyError, TypeError):
            raise invalid from None
        except (DjangoValidationError, ValueError):
            raise invalid from None
        if any(value is None for value in parsed):
            raise invalid
        return Cursor(values=parsed, backwards=bool(payload["b"]))

    def _link(self, cursor: str | None) -> str | None:
        if cursor is None or self.request is None:
            return None
        return replace_query_param(self.request.build_absolute_uri(), self.cursor_query_param, cursor)


def cursor_after(model: type[Model], ordering: Sequence[str], row: Any) -> str:
    """The `cursor` of the page that follows `row` under `ordering`, as a `next` link would carry it.

    Lets benchmarks and tests jump straight to any depth instead of walking every page before it.
    """
    paginator = KeysetPagination()
    keys = [SortKey.parse(spec) for spec in ordering]
    fields = [model._meta.get_field(key.field) for key in keys]
    return paginator._encode(row, fields, keys, backwards=False)


def _row_value(row: Any, field: Field) -> Any:
    if isinstance(row, dict):
        return row[field.name] if field.name in row else row[field.attname]
    return getattr(row, field.attname)


def _to_json(value: Any) -> Any:
    if value is None:
        raise ImproperlyConfigured("Keyset pagination cannot order by a column that holds NULL.")
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    return value
