"""Server profile forms, built from the transports' own settings models: every type gets its own
fields with no second list of them, and a posted form becomes the body the API takes."""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from starlette.datastructures import FormData, UploadFile

from app.console.web import SECURITY_FLAGS
from app.transports.registry import TRANSPORTS
from app.transports.smtp import SmtpConfig, default_port

Kind = Literal["text", "number", "checkbox", "select", "secret", "pem", "textarea"]

SECURITY_MODES = {
    "none": "None (plain text, no STARTTLS)",
    "starttls": "STARTTLS if the server offers it",
    "starttls_required": "STARTTLS required",
    "tls": "Implicit TLS (SMTPS)",
}
"""Sage X3's four modes; SmtpConfig maps `security` onto secure / ignoreTLS / requireTLS."""
PEM_FIELDS = frozenset({"caCertificates", "clientCertificate", "clientKey"})
MAX_UPLOAD = 200_000
"""The settings' own limit on a PEM field."""

HELP = {
    "settings.name": "The EHLO name; empty: POSTROOM_HOSTNAME or this machine's name.",
    "settings.proxy": "socks5://, socks4:// or http://[user:pass@]host:port",
    "settings.connectionTimeout": "Milliseconds.",
    "settings.greetingTimeout": "Milliseconds.",
    "settings.socketTimeout": "Milliseconds.",
    "settings.caCertificates": "PEM: the CAs to trust for this server (a private CA).",
    "settings.clientCertificate": "PEM: the client certificate, with its key below.",
    "settings.authMethod": "Empty: the first the server offers of PLAIN, LOGIN, CRAM-MD5.",
    "settings.pool": "Keep connections open and reuse them (maxConnections, maxMessages).",
    "settings.debug": "Log the SMTP conversation (credentials redacted).",
    "maxRecipientsPerMessage": "How many recipients one BCC-group message carries; default 50.",
    "fallback": "Another profile to use when this one fails before any content was sent.",
}


@dataclass(frozen=True, slots=True)
class Field:
    path: str
    """Dotted camelCase path in the API body: `settings.host`, `settings.oauth2.clientId`."""
    label: str
    kind: Kind
    required: bool = False
    choices: tuple[tuple[str, str], ...] = ()
    placeholder: str = ""
    secret: bool = False
    """Write-only: never shown, and left empty it keeps the stored value."""

    @property
    def id(self) -> str:
        return "f-" + self.path.replace(".", "-")

    @property
    def help(self) -> str:
        return HELP.get(self.path, "")


@dataclass(frozen=True, slots=True)
class Group:
    legend: str
    fields: list[Field]


LABELS = {
    "pass": "Password",
    "name": "EHLO name",
    "user": "User name",
    "caCertificates": "CA certificates",
    "oauth2": "OAuth2",
    "tokenUrl": "Token URL",
    "clientId": "Client ID",
    "apiKey": "API key",
    "baseUrl": "Base URL",
    "accessKeyId": "Access key ID",
    "tenantId": "Tenant ID",
    "userId": "User ID (the sending mailbox)",
    "endpointUrl": "Endpoint URL",
    "loginUrl": "Login URL",
    "graphUrl": "Graph URL",
}


def _label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    return "".join(
        f" {c.lower()}" if c.isupper() and i else c for i, c in enumerate(key)
    ).capitalize()


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types of a union, each without its Annotated metadata (Integer is int)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    return tuple(
        get_args(m)[0] if get_origin(m) is Annotated else m for m in members or (annotation,)
    )


def _model(annotation: Any) -> type[BaseModel] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _field(path: str, info: FieldInfo) -> Field | None:
    """The form field of a setting; None for a nested settings object (its own fieldset)."""
    key = path.rsplit(".", 1)[-1]
    members = [m for m in _members(info.annotation) if m is not type(None)]
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=False)
    placeholder = "" if default is None or isinstance(default, bool) else str(default)
    secret = SecretStr in members
    if key in PEM_FIELDS:
        return Field(path, _label(key), "pem", required, secret=secret)
    if secret:
        return Field(path, _label(key), "secret", required, secret=True)
    if _model(info.annotation) is not None:
        return None
    first = members[0] if members else str
    if first is bool:
        return Field(path, _label(key), "checkbox")
    if get_origin(first) is Literal:
        choices = tuple((str(v), str(v)) for v in get_args(first))
        if not required and default is None:
            choices = (("", "(default)"), *choices)
        return Field(path, _label(key), "select", required, choices)
    if first is int:
        return Field(path, _label(key), "number", required, placeholder=placeholder)
    return Field(path, _label(key), "text", required, placeholder=placeholder)


def settings_groups(type_: str) -> list[Group]:
    """The type's settings as fieldsets: its own fields, then each nested object's (oauth2)."""
    config: type[BaseModel] = TRANSPORTS[type_].config
    main: list[Field] = []
    groups: list[Group] = []
    for name, info in config.model_fields.items():
        key = info.alias or name
        if config is SmtpConfig and key in SECURITY_FLAGS:
            if key == "secure":
                main.append(
                    Field(
                        "settings.security",
                        "Security",
                        "select",
                        True,
                        tuple(SECURITY_MODES.items()),
                    )
                )
            continue
        made = _field(f"settings.{key}", info)
        sub = _model(info.annotation)
        if made is not None or sub is None:
            main.extend([made] if made else [])
            continue
        nested = [  # required only when the group is used: the server says so, not the browser
            dataclasses.replace(f, required=False)
            for n, i in sub.model_fields.items()
            if isinstance(f := _field(f"settings.{key}.{i.alias or n}", i), Field)
        ]
        groups.append(Group(f"{_label(key)} (optional)", nested))
    return [Group(f"{type_} settings", main), *groups]


COMMON = [
    Field("description", "Description", "textarea"),
    Field("senderEmail", "Sender email", "text"),
    Field("senderName", "Sender name", "text"),
    Field("signature", "Signature", "textarea"),
    Field("maxRecipientsPerMessage", "Max recipients per message", "number", placeholder="50"),
    Field("fallback", "Fallback profile", "select"),
    Field("theme", "Theme", "select"),
]


def security_mode(settings: dict[str, Any]) -> str:
    if settings.get("secure"):
        return "tls"
    if settings.get("ignoreTLS"):
        return "none"
    return "starttls_required" if settings.get("requireTLS") else "starttls"


def port_hint(mode: str) -> str:
    """The port that goes with a security mode (i-net Clear Reports' suggestion)."""
    if mode == "tls":
        return str(default_port(True))
    return "587" if mode == "starttls_required" else str(default_port(False))


def current_values(profile: dict[str, Any]) -> dict[str, Any]:
    """A stored profile (ProfileOut as JSON) as form values by path; secrets only as `<path>Set`."""
    values: dict[str, Any] = {k: profile.get(k) for k in (f.path for f in COMMON)}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                values[f"{prefix}{key}"] = value

    walk(profile.get("settings") or {}, "settings.")
    if profile.get("type") == "smtp":
        values["settings.security"] = security_mode(profile.get("settings") or {})
    return values


async def read(form: FormData, type_: str) -> tuple[dict[str, Any], set[str]]:
    """The posted form as the API's whole-profile body (PUT semantics: an empty secret is left
    out, so the stored one is kept; `<path>.clear` sends null to clear it), and the paths of
    every field the form has (to turn the body into a merge patch for verify and test)."""
    body: dict[str, Any] = {"type": type_, "name": str(form.get("name") or "") or None}
    if body["name"] is None:
        del body["name"]
    fields = [*COMMON, *(f for g in settings_groups(type_) for f in g.fields)]
    for f in fields:
        value = await _value(form, f)
        if value is not _OMIT:
            put(body, f.path, value)
    for group in settings_groups(type_)[1:]:  # an optional object with nothing in it is absent
        parent = group.fields[0].path.rsplit(".", 1)[0]
        node = _get(body, parent)
        if node is None or (isinstance(node, dict) and all(v is None for v in node.values())):
            put(body, parent, None)
    return body, {f.path for f in fields if not f.secret}


_OMIT = object()


async def _value(form: FormData, f: Field) -> Any:
    raw = form.get(f.path)
    if f.kind == "checkbox":
        return raw is not None
    if f.kind == "pem":
        upload = form.get(f"{f.path}.file")
        if isinstance(upload, UploadFile) and upload.filename:
            data = await upload.read(MAX_UPLOAD + 1)
            return data.decode("utf-8", errors="replace")
    text = raw.strip() if isinstance(raw, str) else ""
    if f.secret:
        if text:
            return text
        return None if form.get(f"{f.path}.clear") else _OMIT
    if not text:
        return _OMIT
    if f.kind == "number":
        return int(text) if text.isdigit() else text
    return text


def put(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = body
    for parent in parents:
        node = node.setdefault(parent, {})
    node[leaf] = value


def _get(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def as_patch(body: dict[str, Any], paths: set[str]) -> dict[str, Any]:
    """The form as a merge patch onto the stored profile: what the form leaves empty is reset
    (null), secrets it leaves empty are kept, as a save would."""
    patch = {k: v for k, v in body.items() if k not in ("name",)}
    for path in paths:
        if _get(patch, path) is None and not _cleared_parent(patch, path):
            put(patch, path, None)
    return patch


def _cleared_parent(patch: dict[str, Any], path: str) -> bool:
    parts = path.split(".")
    node: Any = patch
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return False
        if part in node and node[part] is None:
            return True
        node = node.get(part)
    return False


def secrets_set(profile: dict[str, Any]) -> list[str]:
    """The dotted paths (under settings) of the secrets a stored profile has set."""
    found: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key.endswith("Set") and value is True:
                found.append(f"{prefix}{key.removesuffix('Set')}")

    walk(profile.get("settings") or {}, "")
    return found
