"""Splitting a type's settings into what is stored in clear and what is encrypted.

A settings model marks its secrets with SecretStr. Secrets are kept under their dotted camelCase
path ("pass", "oauth2.clientSecret"); the API shows each only as `<name>Set: true|false`.

A setting that became a secret after rows were stored (SMTP `proxy`, which may carry user:pass)
may still be held in clear in a row's public settings: `view` and `stored` treat that value as
the secret (set, never shown), and the next save moves it to the encrypted secrets. No migration.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, get_args

from pydantic import BaseModel, SecretStr
from pydantic_core import to_jsonable_python

Secrets = dict[str, str]


def _members(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation) or (annotation,)


def _is_secret(annotation: Any) -> bool:
    return SecretStr in _members(annotation)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for member in _members(annotation):
        if inspect.isclass(member) and issubclass(member, BaseModel):
            return member
    return None


def split(model: BaseModel) -> tuple[dict[str, Any], Secrets]:
    """The model's public settings (camelCase, JSON-able) and its secrets by dotted path."""
    public: dict[str, Any] = {}
    secrets: Secrets = {}
    for name, info in type(model).model_fields.items():
        key = info.alias or name
        value = getattr(model, name)
        if _is_secret(info.annotation):
            if value is not None:
                secrets[key] = value.get_secret_value()
        elif isinstance(value, BaseModel):
            sub_public, sub_secrets = split(value)
            public[key] = sub_public
            secrets.update({f"{key}.{path}": secret for path, secret in sub_secrets.items()})
        else:
            public[key] = to_jsonable_python(value)
    return public, secrets


def join(public: dict[str, Any], secrets: Secrets) -> dict[str, Any]:
    """The whole settings as the API takes them: public settings with secrets put back."""
    whole = copy.deepcopy(public)
    for path, secret in secrets.items():
        *parents, leaf = path.split(".")
        node = whole
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = secret
    return whole


def keep_omitted(given: dict[str, Any], secrets: Secrets) -> dict[str, Any]:
    """Settings from an update, with each stored secret the update does not mention kept.

    A secret given as null is cleared; a nested object given as null drops its secrets too.
    """
    whole = copy.deepcopy(given)
    for path, secret in secrets.items():
        *parents, leaf = path.split(".")
        node: Any = whole
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = secret
    return whole


def view(
    model_class: type[BaseModel], public: dict[str, Any], secrets: Secrets, prefix: str = ""
) -> dict[str, Any]:
    """Public settings for a response: each secret replaced by `<name>Set`."""
    shown: dict[str, Any] = {}
    for name, info in model_class.model_fields.items():
        key = info.alias or name
        sub = _submodel(info.annotation)
        if _is_secret(info.annotation):
            shown[f"{key}Set"] = f"{prefix}{key}" in secrets or public.get(key) is not None
        elif sub is not None and isinstance(public.get(key), dict):
            shown[key] = view(sub, public[key], secrets, f"{prefix}{key}.")
        elif key in public:
            shown[key] = public[key]
    return shown


def stored(model_class: type[BaseModel], public: dict[str, Any], secrets: Secrets) -> Secrets:
    """A row's secrets: the decrypted ones, plus any secret setting the row still holds in clear
    in its public settings (stored before that setting became a secret)."""
    found = dict(secrets)
    for path in secret_paths(model_class):
        if path in found:
            continue
        node: Any = public
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            found[path] = node
    return found


def secret_paths(model_class: type[BaseModel], prefix: str = "") -> list[str]:
    """Every secret a settings model can hold, by dotted path."""
    paths: list[str] = []
    for name, info in model_class.model_fields.items():
        key = info.alias or name
        sub = _submodel(info.annotation)
        if _is_secret(info.annotation):
            paths.append(f"{prefix}{key}")
        elif sub is not None:
            paths.extend(secret_paths(sub, f"{prefix}{key}."))
    return paths
