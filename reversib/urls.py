"""URLs as reversib shows and records them: never with a secret in them."""

from __future__ import annotations


def has_password(url: str) -> bool:
    """Whether `url` carries a password or secret key in its user part (`scheme://user:SECRET@host...`).
    A secret may hold `/` (half of AWS secret keys do), so the user part is what comes before the first
    `@` -- unless that is `host:PORT/path...@`, an `@` in a path after a port."""
    _, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return False
    user = rest.split("@", 1)[0]
    if ":" not in user:
        return False
    if "/" not in user:
        return True  # user:password@host
    head = user.split("/", 1)[0]
    return ":" in head and not head.rsplit(":", 1)[1].isdigit()


def no_password(value: str | None) -> str | None:
    """A validator: `value` unchanged, or ValueError (without the value) when it holds a password."""
    if value is not None and has_password(value):
        scheme = value.partition("://")[0].lower()
        raise ValueError(f"a password (or secret key) in a {scheme}:// URL is refused: it would be shown and "
                         "recorded; give it by the options' *_env / *_file keys (sftp: password_env / "
                         "password_file; s3: secret_access_key_env / secret_access_key_file)")
    return value
