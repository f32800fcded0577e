"""What `OPTIONS` answers on every API route (docs/api.md "OPTIONS and HEAD").

DRF's `SimpleMetadata` also describes the body of POST/PUT by instantiating the view's
`serializer_class`. Our views nest their serializers (STYLE.md pattern 3) and declare none, so that
introspection failed with a 500. Bodies and fields are described once, by the OpenAPI schema; OPTIONS
names the route's methods and points there.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework.metadata import BaseMetadata
from rest_framework.request import Request


class ApiMetadata(BaseMetadata):
    def determine_metadata(self, request: Request, view: Any) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            # The same list as the `Allow` header DRF sends with the answer.
            "methods": list(view.allowed_methods),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
            "schema": reverse("api-schema"),
        }
