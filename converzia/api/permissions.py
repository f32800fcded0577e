"""Permission classes. Tenant roles are checked by `TenantMixin.required_permission` (converzia.api.base)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class IsStaff(BasePermission):
    """Converzia staff only (`is_staff`): the ops and admin APIs. Anonymous callers get 401, others 403."""

    message = "This endpoint is for Converzia staff."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff)
