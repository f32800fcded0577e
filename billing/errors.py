"""Errors of the billing domain."""

from converzia.errors import Conflict, InsufficientCredits, InvalidInput


class NotEnoughCredits(InsufficientCredits):
    pass


class TrialAlreadyGranted(Conflict):
    message = "This tenant has already received its trial credits."


class AlreadyCharged(Conflict):
    message = "This delivery has already been charged."


class AlreadyRefunded(Conflict):
    message = "This delivery has already been refunded."


class NothingToRefund(Conflict):
    message = "This delivery was never charged, so there is nothing to refund."


class OrderNotPending(Conflict):
    message = "Only a pending order can be completed."


class InvalidAmount(InvalidInput):
    message = "The amount is not valid."
