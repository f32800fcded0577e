"""Shared building blocks for the staff admin: a paginator that never counts a big table, a base
`ModelAdmin` with the defaults every changelist needs on millions of rows, read-only mixins, a tenant
list filter that reads only the (small) tenants table, and the intermediate-form pattern for actions
that call services.

Why the paginator matters: Django's changelist counts the filtered queryset on every page
(`paginator.count`) and, unless `show_full_result_count = False`, the whole table a second time. On
`lead_offers` (2M rows) each of those is a full scan. `FastCountPaginator` reads the planner's row
estimate (`pg_class.reltuples`) for an unfiltered list and otherwise counts at most `count_cap + 1`
rows, so a page costs a bounded amount of work whatever the table size.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Field, Model, Q, QuerySet, URLField
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from converzia.errors import DomainError
from converzia.models import Tenant

# Counting more rows than this to draw page links is wasted work: nobody pages through 200 pages
# of 50; they filter or search instead.
DEFAULT_COUNT_CAP = 10_000
# Below this many rows an exact (capped) count is as cheap as the estimate and always right.
DEFAULT_ESTIMATE_ABOVE = 50_000
# Actions call one service per object; a "select all" across a big table must not turn one click
# into a request that runs for minutes.
DEFAULT_ACTION_LIMIT = 500


def table_row_estimate(model: type[Model], *, using: str = "default") -> int | None:
    """The planner's row estimate for `model`'s table, or None when the table was never analysed.

    A catalog lookup (no table scan); autovacuum's ANALYZE keeps it within a few percent.
    """
    connection = connections[using]
    # A one-row catalog read with a bound parameter: no statement timeout or retry is needed here.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(model._meta.db_table)],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


def queryset_is_unfiltered(queryset: QuerySet[Any]) -> bool:
    """True when `queryset` selects every row of its table (so the table's row estimate applies)."""
    query = queryset.query
    return not (
        query.where
        or query.is_sliced
        or query.distinct
        or query.combinator
        or query.model._meta.proxy
        or query.model._meta.parents
    )


class FastCountPaginator(Paginator):
    """A paginator whose `count` costs O(1) unfiltered and O(`count_cap`) filtered.

    `count_is_estimate` and `count_is_capped` tell the pagination template to say "about N" or
    "more than N" instead of pretending to be exact.
    """

    def __init__(
        self,
        object_list: Any,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
        *,
        count_cap: int = DEFAULT_COUNT_CAP,
        estimate_above: int = DEFAULT_ESTIMATE_ABOVE,
    ) -> None:
        super().__init__(object_list, per_page, orphans, allow_empty_first_page)
        self.count_cap = count_cap
        self.estimate_above = estimate_above
        self.count_is_estimate = False
        self.count_is_capped = False

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if not isinstance(object_list, QuerySet):
            return len(object_list)
        if queryset_is_unfiltered(object_list):
            estimate = table_row_estimate(object_list.model, using=object_list.db)
            if estimate is not None and estimate >= self.estimate_above:
                self.count_is_estimate = True
                return estimate
        # `SELECT count(*) FROM (SELECT … LIMIT cap+1)`: the ORDER BY is dropped so the planner may
        # stop a plain or bitmap scan early instead of walking the ordering index.
        bounded = object_list.order_by()[: self.count_cap + 1].count()
        if bounded > self.count_cap:
            self.count_is_capped = True
            return self.count_cap
        return bounded


class TenantFilter(admin.SimpleListFilter):
    """Filter by tenant, listing tenants from their own small table.

    Django's `RelatedOnlyFieldListFilter` would run `SELECT DISTINCT tenant_id` over the filtered
    table (2M lead_offers); this reads `tenants` only. The parameter is `tenant`, which the
    index-aware orderings below key on.
    """

    title = "tenant"
    parameter_name = "tenant"
    field_name = "tenant_id"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Tenant.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        tenant_id = as_uuid(value)
        if tenant_id is None:
            return queryset.none()
        return queryset.filter(**{self.field_name: tenant_id})


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        return None


def admin_change_link(model: type[Model], pk: Any, label: str | None = None) -> str:
    """A link to `model`'s change page for `pk`, built from the id alone (no query for the object)."""
    if pk is None:
        return "-"
    opts = model._meta
    try:
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk])
    except NoReverseMatch:
        return label or str(pk)
    return format_html('<a href="{}">{}</a>', url, label or str(pk)[:8])


def https_formfield(db_field: Field, **kwargs: Any) -> forms.Field | None:
    """`formfield_callback` for admin ModelForms: staff type "acme.com"; read it as https (Django 6's
    default, opted into early)."""
    if isinstance(db_field, URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class FastModelAdmin(admin.ModelAdmin):
    """Base for every Converzia admin: bounded counts, no facet counts, no full-table recount.

    `indexed_orderings` maps changelist filters to the ordering an index serves under them: the
    first entry whose parameters are all present in the query string wins, else `ordering`. Django
    appends `-pk` to make any ordering total, which is exactly the tie-breaker our composite indexes
    carry (e.g. `(tenant, updated_at DESC, id DESC)`).
    """

    paginator = FastCountPaginator
    show_full_result_count = False
    # Facets count every filter choice over the filtered table: one more full scan per filter.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    list_max_show_all = 200
    count_cap = DEFAULT_COUNT_CAP
    count_estimate_above = DEFAULT_ESTIMATE_ABOVE
    indexed_orderings: Sequence[tuple[Sequence[str], Sequence[str]]] = ()

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> Paginator:
        return self.paginator(
            queryset,
            per_page,
            orphans,
            allow_empty_first_page,
            count_cap=self.count_cap,
            estimate_above=self.count_estimate_above,
        )

    def formfield_for_dbfield(
        self, db_field: Field, request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        # As `https_formfield`, for the forms the admin builds itself.
        if isinstance(db_field, URLField):
            kwargs.setdefault("assume_scheme", "https")
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_ordering(self, request: HttpRequest) -> Sequence[str]:
        for params, ordering in self.indexed_orderings:
            if all(request.GET.get(param) for param in params):
                return ordering
        return super().get_ordering(request)


class ViewOnlyMixin:
    """Staff may read these rows; only services write them."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class NoAddMixin:
    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class NoDeleteMixin:
    """Rows that are archived or anonymised, never deleted (or whose delete would cascade to millions)."""

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ViewOnlyInlineMixin:
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def limited_inline_formset(limit: int) -> type[forms.BaseInlineFormSet]:
    """An inline formset showing only the first `limit` rows of its (ordered) queryset.

    For view-only inlines over children that can grow without bound (a lead_offer's events).
    """

    class LimitedInlineFormSet(forms.BaseInlineFormSet):
        def get_queryset(self) -> QuerySet[Any]:
            if not hasattr(self, "_limited_queryset"):
                self._limited_queryset = super().get_queryset()[:limit]
            return self._limited_queryset

    return LimitedInlineFormSet


# --- Actions that call services ---------------------------------------------------------------------


def action_objects(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    limit: int = DEFAULT_ACTION_LIMIT,
    exactly_one: bool = False,
) -> list[Any] | None:
    """The selected objects, or None (with an error message) when the selection is too large.

    Loads at most `limit + 1` rows, so "select all" over millions never materialises them.
    """
    if exactly_one:
        limit = 1
    objects = list(queryset[: limit + 1])
    if exactly_one and len(objects) != 1:
        modeladmin.message_user(request, "Select exactly one row for this action.", messages.ERROR)
        return None
    if len(objects) > limit:
        modeladmin.message_user(
            request, f"Select at most {limit} rows for this action; narrow the list first.", messages.ERROR
        )
        return None
    return objects


def run_for_each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    objects: Iterable[Any],
    operation: Callable[[Any], Any],
) -> list[tuple[Any, Any]]:
    """Call `operation(obj)` (one service call, its own transaction) for each object.

    A `DomainError` becomes an error message naming the object; the other objects still run.
    Returns the `(obj, result)` pairs that succeeded.
    """
    done: list[tuple[Any, Any]] = []
    for obj in objects:
        try:
            done.append((obj, operation(obj)))
        except DomainError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
    return done


def _posted_action_name(request: HttpRequest) -> str:
    """The action being run, picked the way `ModelAdmin.response_action` picks it."""
    names = request.POST.getlist("action")
    try:
        index = int(request.POST.get("index", 0))
    except ValueError:
        index = 0
    if not names:
        return ""
    return names[index] if index < len(names) else names[-1]


def form_action(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    form_class: type[forms.Form],
    title: str,
    submit_label: str,
    apply: Callable[[HttpRequest, list[Any], dict[str, Any]], None],
    intro: str = "",
    exactly_one: bool = False,
    limit: int = DEFAULT_ACTION_LIMIT,
) -> TemplateResponse | None:
    """The intermediate-page action pattern.

    First POST (from the changelist): render `form_class` on a confirmation page that carries the
    selection along. Second POST (with `apply`): validate; if valid run `apply(request, objects,
    cleaned_data)` and return None, which sends the browser back to the changelist with the messages;
    if invalid, render the page again with the errors and change nothing.
    """
    objects = action_objects(modeladmin, request, queryset, limit=limit, exactly_one=exactly_one)
    if objects is None:
        return None
    if "apply" in request.POST:
        form = form_class(request.POST)
        if form.is_valid():
            apply(request, objects, form.cleaned_data)
            return None
    else:
        form = form_class()

    opts = modeladmin.model._meta
    shown = objects[:20]
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "submit_label": submit_label,
        "form": form,
        "opts": opts,
        "objects": shown,
        "more": len(objects) - len(shown),
        "selected_pks": [str(obj.pk) for obj in objects],
        "action": _posted_action_name(request),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media + form.media,
    }
    return TemplateResponse(request, "admin/converzia/action_form.html", context)


class ExactSearchMixin:
    """Search through `exact_search_q(term)`: indexed equality lookups only, never `ILIKE '%x%'`.

    `exact_search_q` returns a `Q` (which may match nothing) for a term it understands, or None, in
    which case the list is empty and the staff member is told what the box accepts.
    """

    search_help_text: str | None

    def exact_search_q(self, term: str) -> Q | None:
        raise NotImplementedError

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = self.exact_search_q(term)
        if condition is None:
            self.message_user(  # type: ignore[attr-defined]
                request,
                f"“{term}” is not something this list can be searched by. {self.search_help_text}",
                messages.WARNING,
            )
            return queryset.none(), False
        return queryset.filter(condition), False


def any_of(conditions: Sequence[Q]) -> Q:
    """OR the conditions; no conditions matches nothing (Django answers it without a query)."""
    if not conditions:
        return Q(pk__in=[])
    combined = conditions[0]
    for condition in conditions[1:]:
        combined |= condition
    return combined
