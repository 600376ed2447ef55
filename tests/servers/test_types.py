"""Every profile type an admin can create (the union in app/servers/schemas.py) is covered by the
profile CRUD suite (tests/servers/test_profiles.py) and the secrets suite (tests/test_secrets.py),
and every list of types in the app is the union's: a provider added there fails here until
tests/servers/helpers.py has a realistic body for it, with each of its secrets."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from app.console.servers import TYPES as CONSOLE_TYPES
from app.errors import validation_details
from app.openapi import PROFILES
from app.secret_fields import secret_paths
from app.servers.schemas import PROFILE_MODELS, PROFILE_TYPES, ProfileBody
from app.transports.registry import TRANSPORTS
from tests.servers import test_profiles
from tests.servers.helpers import BODIES, SECRETS, body
from tests.test_secrets import tracked_secrets

PROFILE = TypeAdapter(ProfileBody)


def test_the_lists_of_types_are_the_unions() -> None:
    assert "smtp" in PROFILE_TYPES
    assert CONSOLE_TYPES == PROFILE_TYPES
    assert [model.__name__ for model in PROFILE_MODELS] == PROFILES
    assert set(PROFILE_TYPES) <= set(TRANSPORTS), "a creatable type without a transport"


def test_the_crud_and_secrets_suites_cover_every_creatable_type() -> None:
    assert set(BODIES) == set(SECRETS) == set(PROFILE_TYPES)
    assert set(test_profiles.TYPES) == set(PROFILE_TYPES)
    payloads, _, _ = tracked_secrets()
    for type_ in PROFILE_TYPES:
        given = {
            path
            for payload in payloads
            if payload["type"] == type_
            for path in secret_paths(TRANSPORTS[type_].config)
            if _has(payload["settings"], path)
        }
        assert given == set(secret_paths(TRANSPORTS[type_].config)), f"{type_}'s secrets"


@pytest.mark.parametrize("type_", PROFILE_TYPES)
def test_each_body_is_a_valid_profile_of_its_type(type_: str) -> None:
    profile = PROFILE.validate_python(body(type_, f"p_{type_}"))
    assert profile.type == type_
    assert set(SECRETS[type_]) <= set(secret_paths(TRANSPORTS[type_].config))


@pytest.mark.parametrize("type_", PROFILE_TYPES)
def test_an_error_names_the_field_without_the_union_tag(type_: str) -> None:
    wrong = body(type_, f"p_{type_}", description=1)
    with pytest.raises(ValidationError) as raised:
        PROFILE.validate_python(wrong)
    details = validation_details(raised.value.errors(), PROFILE_TYPES)
    assert [d["field"] for d in details] == ["description"]


def _has(settings: dict[str, object], path: str) -> bool:
    """Whether the settings give a value at a dotted path ("oauth2.clientSecret")."""
    value: object = settings
    for key in path.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return False
        value = value[key]
    return True
