"""Meta-shaped `leadgen` webhook bodies for load generators and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson


def leadgen_payload(
    *, page_id: str, ad_id: str, form_id: str, leadgen_ids: Sequence[str], created_time: int
) -> dict[str, Any]:
    """One `page` POST with one entry carrying a leadgen change per id, as Meta batches them."""
    return {
        "object": "page",
        "entry": [
            {
                "id": page_id,
                "time": created_time,
                "changes": [
                    {
                        "field": "leadgen",
                        "value": {
                            "leadgen_id": leadgen_id,
                            "page_id": page_id,
                            "form_id": form_id,
                            "adgroup_id": ad_id,
                            "ad_id": ad_id,
                            "created_time": created_time,
                        },
                    }
                    for leadgen_id in leadgen_ids
                ],
            }
        ],
    }


def leadgen_body(
    *, page_id: str, ad_id: str, form_id: str, leadgen_ids: Sequence[str], created_time: int
) -> bytes:
    """The raw bytes of `leadgen_payload` (what gets signed and POSTed)."""
    return orjson.dumps(
        leadgen_payload(
            page_id=page_id,
            ad_id=ad_id,
            form_id=form_id,
            leadgen_ids=leadgen_ids,
            created_time=created_time,
        )
    )
