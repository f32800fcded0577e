"""JSON rendering through orjson (several times faster than the stdlib encoder on list pages)."""

from __future__ import annotations

import decimal
from typing import Any

import orjson
from django.utils.functional import Promise
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_fallback_encoder = JSONEncoder()


def _default(value: Any) -> Any:
    # Decimals as strings, like DRF's COERCE_DECIMAL_TO_STRING: money never passes through a float.
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Promise):
        return str(value)
    # Querysets, timedeltas, bytes, generators: whatever DRF's own encoder knows.
    return _fallback_encoder.default(value)


class OrjsonRenderer(JSONRenderer):
    """Compact UTF-8 JSON. Falls back to DRF's encoder when indentation is asked for (`; indent=4`)."""

    _options = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: dict[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        if self.get_indent(accepted_media_type, renderer_context or {}):
            return super().render(data, accepted_media_type, renderer_context)
        return orjson.dumps(data, default=_default, option=self._options)
