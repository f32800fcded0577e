"""Base class for Converzia's management commands: `--tenant` lookup and clear errors."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from converzia.models import Tenant


class ConverziaCommand(BaseCommand):
    """Commands stay thin: parse arguments, call a service or selector, report with `self.stdout`."""

    def add_tenant_argument(self, parser: CommandParser, *, required: bool = False) -> None:
        parser.add_argument("--tenant", required=required, help="Tenant UUID or slug.")

    def get_tenant(self, options: dict[str, Any]) -> Tenant | None:
        value = options.get("tenant")
        if not value:
            return None
        lookup: dict[str, Any]
        try:
            lookup = {"pk": uuid.UUID(value)}
        except ValueError:
            lookup = {"slug": value}
        try:
            return Tenant.objects.get(**lookup)
        except Tenant.DoesNotExist:
            raise CommandError(f"No tenant with id or slug {value!r}.") from None
