"""Errors of the leads domain."""

from converzia.errors import InvalidInput, InvalidTransition


class InvalidPhone(InvalidInput):
    message = "The phone number is not valid."


class LeadOfferInvalidTransition(InvalidTransition):
    def __init__(self, from_status: str, to_status: str, allowed: list[str]) -> None:
        super().__init__(
            f"A lead cannot move from {from_status} to {to_status}.",
            details={"from": from_status, "to": to_status, "allowed": allowed},
        )
