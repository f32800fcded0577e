"""Refresh the `tenant_stats_materialized` view now (CONCURRENTLY; plain the first time).

Prints which kind of refresh ran, how long it took and how many rows the view holds. `--plain`
forces a non-concurrent refresh (faster, but readers wait for it). Fails with a clear error when
another refresh is already running.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from converzia.management.base import ConverziaCommand
from portal.stats_view import VIEW_NAME, StatsRefreshInProgress, tenant_stats_refresh


class Command(ConverziaCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--plain",
            action="store_true",
            help="Refresh without CONCURRENTLY (faster; blocks readers of the view meanwhile).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = tenant_stats_refresh(concurrently=False if options["plain"] else None)
        except StatsRefreshInProgress:
            raise CommandError(
                f"Another refresh of {VIEW_NAME} is running (advisory lock held); try again later."
            ) from None
        kind = "concurrently" if result.concurrently else "plain"
        self.stdout.write(
            f"Refreshed {VIEW_NAME} ({kind}) in {result.duration_ms} ms: {result.row_count} rows, "
            f"as of {result.refreshed_at.isoformat()}."
        )
