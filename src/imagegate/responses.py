"""The one way handlers answer JSON: orjson-encoded (exact decimals arrive as strings)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi.responses import Response


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """`body` as an `application/json` response with `status` and `headers`."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)
