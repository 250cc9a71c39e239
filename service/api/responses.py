"""Error answers every route with a JSON body can give, for the OpenAPI document (a schema-driven
client or fuzzer checks each status it gets against the route's list)."""
from __future__ import annotations

from typing import Any

BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Body is not parseable: a number with more than 4,300 digits, nesting deeper than "
                         "the JSON parser allows, a body cut short"},
    408: {"description": "Body not received within body_timeout_s (the connection is closed)"},
    413: {"description": "Body over max_body_bytes"},
}
