"""Output serializers shared by several portal endpoints."""

from __future__ import annotations

from rest_framework import serializers

from leads.funnel import FUNNEL_STAGES


class FunnelStagesSerializer(serializers.Serializer):
    """One counter per funnel stage (leads.funnel.FUNNEL_STAGES)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            stage.key: serializers.IntegerField(help_text=f"{stage.label}: {', '.join(stage.statuses)}.")
            for stage in FUNNEL_STAGES
        }


class FunnelCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="All lead_offers; always the sum of `stages`.")
    stages = FunnelStagesSerializer()
    conversion_rate = serializers.FloatField(help_text="delivered / total × 100, 2 decimals.")
