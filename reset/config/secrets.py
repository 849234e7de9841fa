"""Credentials in URLs: a config value that carries them is refused (secrets come from the
environment or Kubernetes Secrets, never from pipeline parameters, compiled YAML, logs or MLflow)."""

from __future__ import annotations

import re

# A query (or fragment) parameter whose name, once decoded and lower-cased, is or ends with one of
# these is a credential: token, access_token, client_secret, api_key / api-key / x-api-key, sig
# (Azure SAS), X-Amz-Signature (S3 presigned URLs), password, ...
_SECRET_PARAM = re.compile(
    r"^(?:key|sig|auth|authorization|apikey)$"
    r"|(?:^|[_.-])(?:token|secret|password|passwd|pwd|signature|credentials?|security-token)$"
    r"|(?:^|[_.-])(?:api|access|secret|private|subscription|account|client)[_.-]?key$", re.IGNORECASE)


def url_secret(url: str) -> str:
    """What in a URL looks like a credential ("" if nothing): user info (`user:pw@host`) or a query
    or fragment parameter such as token, key, api_key, sig, client_secret. The value itself is
    never returned."""
    from urllib.parse import parse_qsl

    rest = url.split("://", 1)[-1]
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in host:
        return "user info (user:password@host)"
    query = url.split("?", 1)[1] if "?" in url else ""
    fragment = url.split("#", 1)[1] if "#" in url else ""
    for part in (query.split("#", 1)[0], fragment):
        for name, _ in parse_qsl(part.replace(";", "&"), keep_blank_values=True):
            if _SECRET_PARAM.search(name.strip()):
                kind = "fragment" if part is fragment and part else "query"
                return f"{kind} parameter {name.strip()!r}"
    return ""


def has_credentials(url: str) -> bool:
    """True when a URL carries credentials (user info or a secret-looking query parameter)."""
    return bool(url_secret(url))
