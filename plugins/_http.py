"""HTTP helpers shared by the plugins that talk HTTP (ci_check, broadcast): what to
call a URL in messages, and how to describe a failed request."""

from __future__ import annotations


def shown_url(url: str) -> str:
    """``url`` without credentials or query string, the usual homes of tokens, for
    messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def http_failure(error: BaseException) -> str | None:
    """Why an HTTP request failed, in words; None when ``error`` is not a network or
    HTTP failure (a bug, which should propagate)."""
    import http.client
    from urllib.error import HTTPError, URLError

    if isinstance(error, HTTPError):
        return f"HTTP {error.code} {error.reason}".rstrip()
    if isinstance(error, URLError):
        reason = error.reason
        return f"cannot connect: {reason.strerror or reason}" if isinstance(reason, OSError) else str(reason)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError | http.client.HTTPException):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if isinstance(error, ValueError):  # urllib's word for a malformed URL or header
        return str(error)
    return None


def is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or bracketed host
        return False
