"""Staff read endpoints (API.md "Admin"). Thin: a selector, a serializer."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from converzia.api.base import ApiView
from converzia.api.permissions import IsStaff
from portal.queue import queue_depth_get


class AdminQueueView(ApiView):
    """`GET /api/admin/queue`: pending inbox events, due, failed, waiting and dead-letter deliveries,
    and the oldest ages. Live counts, never cached (an operator looks here when something is stuck)."""

    permission_classes = (IsStaff,)

    class OutputSerializer(serializers.Serializer):
        class InboxSerializer(serializers.Serializer):
            pending_events = serializers.IntegerField()
            oldest_pending_age_s = serializers.FloatField(allow_null=True)
            parked_changes = serializers.DictField(child=serializers.IntegerField())

        class DeliveriesSerializer(serializers.Serializer):
            due = serializers.IntegerField()
            oldest_due_age_s = serializers.FloatField(allow_null=True)
            in_flight = serializers.IntegerField()
            failed = serializers.IntegerField()
            waiting = serializers.DictField(child=serializers.IntegerField(), help_text="By blocked reason.")
            dead_letter = serializers.IntegerField()

        as_of = serializers.DateTimeField()
        depth = serializers.IntegerField(help_text="Pending inbox events + due deliveries.")
        inbox = InboxSerializer()
        deliveries = DeliveriesSerializer()

    @extend_schema(responses=OutputSerializer, tags=["admin"])
    def get(self, request: Request) -> Response:
        depth = queue_depth_get()
        body = {
            "as_of": depth.as_of,
            "depth": depth.pending_events + depth.due_deliveries,
            "inbox": {
                "pending_events": depth.pending_events,
                "oldest_pending_age_s": depth.oldest_pending_age_s,
                "parked_changes": depth.parked_changes,
            },
            "deliveries": {
                "due": depth.due_deliveries,
                "oldest_due_age_s": depth.oldest_due_age_s,
                "in_flight": depth.in_flight_deliveries,
                "failed": depth.failed_deliveries,
                "waiting": depth.waiting_deliveries,
                "dead_letter": depth.dead_letter_deliveries,
            },
        }
        return Response(self.OutputSerializer(body).data)
