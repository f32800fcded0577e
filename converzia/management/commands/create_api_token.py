"""Issue a personal API token for a user and print it (the only time it is ever shown).

    manage.py create_api_token alice@example.com --name "ci"

The token goes to stdout alone, so `TOKEN=$(manage.py create_api_token …)` works; the note goes to
stderr. Only the token's SHA-256 digest is stored.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser

from converzia.management.base import ConverziaCommand
from converzia.models import User
from converzia.services import api_token_issue


class Command(ConverziaCommand):
    help = "Issue a personal API token for a user (by email) and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email", help="The user's email (case-insensitive).")
        parser.add_argument("--name", default="default", help="A label to recognise the token by.")

    def handle(self, *args: Any, **options: Any) -> None:
        email = options["email"].strip().lower()
        try:
            user = User.objects.get(email=email)
        except User.DoesNotExist:
            raise CommandError(f"No user with email {email!r}.") from None
        if not user.is_active:
            raise CommandError(f"The user {email!r} is inactive; activate them first.")
        try:
            issued = api_token_issue(user=user, name=options["name"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(issued.raw)
        self.stderr.write(
            f"Token {issued.token.key_prefix}… ({issued.token.name!r}) issued for {user.email}. "
            "Store it now: it cannot be shown again."
        )
