"""Schemathesis hooks for test_schemathesis.py (SCHEMATHESIS_HOOKS=<this module>).

The fuzzer calls every operation as the admin it authenticates with; left alone it would change
that admin's password or role (PATCH/DELETE /api/v1/users/admin) and spend the rest of the run on
401s. Those calls go to another user name instead: Postroom refusing to lose its last admin is
tested in tests/users.

`cursor` (GET /api/v1/messages, /api/v1/suppressions, /api/v1/audit) is an opaque token only
a previous page hands out: any string the fuzzer makes up is a 400 by design, so it is not sent
(bad cursors are pinned in test_security, tests/suppressions and tests/audit).

A bounce report (POST /api/v1/hooks/dsn) is raw bytes as `message/rfc822`: sent as the octet
stream serializer sends bytes.
"""

from __future__ import annotations

from typing import Any

import schemathesis

FUZZ_ADMIN = "admin"

schemathesis.serializer.alias("message/rfc822", "application/octet-stream")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    parameters = case.path_parameters or {}
    if case.operation.path == "/api/v1/users/{name}" and parameters.get("name") == FUZZ_ADMIN:
        parameters["name"] = "someone_else"
    paged = (
        "/api/v1/messages",
        "/api/v1/suppressions",
        "/api/v1/suppressions/export",
        "/api/v1/audit",
    )
    if case.operation.path in paged and isinstance(case.query, dict):
        case.query.pop("cursor", None)
