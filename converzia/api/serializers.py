"""Kernel serializers (token login) and query-parameter fields shared by the list endpoints."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class TokenCredentialsSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=256, trim_whitespace=False, style={"input_type": "password"})


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Bearer <token>`. Shown only once.")


class HealthLiveSerializer(serializers.Serializer):
    status = serializers.CharField()


class ChoiceListField(serializers.ListField):
    """A query filter taking one or more choices, repeated (`?status=A&status=B`) or comma-separated."""

    def __init__(self, *, choices: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_empty", False)
        super().__init__(child=serializers.ChoiceField(choices=choices), **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list | tuple):
            self.fail("not_a_list", input_type=type(data).__name__)
        parts = [part.strip() for value in data for part in str(value).split(",") if part.strip()]
        # Keep the first occurrence of each choice, in order.
        return list(dict.fromkeys(super().to_internal_value(parts)))


class StrictInputSerializer(serializers.Serializer):
    """Refuses body fields it does not declare (400 `invalid_input`, one entry per unknown field)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.initial_data, dict):
            unknown = sorted(set(self.initial_data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs
