"""Signals the billing domain sends, so higher domains can react without billing knowing them.

`balance_increased` is sent after the commit of any ledger entry that adds credits (purchase, bonus,
refund, positive adjustment), with `tenant_id` and the new `balance`. Deliveries listen to it to
resume deliveries that were waiting for credits (billing must not import deliveries).
"""

from django.dispatch import Signal

balance_increased = Signal()
