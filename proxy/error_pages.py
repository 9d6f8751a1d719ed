"""HTML pages for the errors the proxy itself produces.

Built-in pages for 404, 413, 502, 503 and 504 ship as jinja2 templates in
``shipyard.templates/error_pages``; any other status gets ``<h1>{code} {reason}</h1>``.
A service may bring its own directory (``--error-pages DIR``) whose ``<status>.html`` files
override the built-ins for that service.  Kamal users write those pages for Go's
html/template, so ``{{ .Message }}`` style placeholders are translated to jinja2 first.
"""

from __future__ import annotations

import glob
import html
import os
import re
from http import HTTPStatus
from importlib import resources
from typing import Any

CONTENT_TYPE = b"text/html; charset=utf-8"

_GO_FIELD = re.compile(r"\{\{\s*\.(Message|Status|StatusText)\s*\}\}")
_GO_TO_JINJA = {"Message": "message", "Status": "status", "StatusText": "status_text"}


class ErrorPagesError(Exception):
    pass


def reason_phrase(status: int) -> str:
    if status == 499:
        return "Client Closed Request"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _translate_go_template(source: str) -> str:
    return _GO_FIELD.sub(lambda m: "{{ " + _GO_TO_JINJA[m.group(1)] + " }}", source)


def _compile(sources: dict[str, str]) -> dict[int, Any]:
    """Parse ``<status>.html`` sources into jinja2 templates (autoescaped, like html/template)."""
    import jinja2  # imported on first use: most proxy runs never render an error page

    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources), autoescape=True, undefined=jinja2.ChainableUndefined
    )
    return {int(name[:-5]): env.get_template(name) for name in sources if name[:-5].isdigit()}


class ErrorPages:
    """A set of templates keyed by status code; ``fallback`` handles the rest."""

    def __init__(
        self,
        sources: dict[str, str],
        fallback: ErrorPages | None,
        templates: dict[int, Any] | None = None,
    ) -> None:
        self._sources = sources
        self._templates = templates
        self._fallback = fallback
        self._cache: dict[int, bytes] = {}

    @classmethod
    def builtin(cls) -> ErrorPages:
        folder = resources.files("shipyard.templates") / "error_pages"
        sources: dict[str, str] = {}
        for entry in folder.iterdir():
            if entry.name.endswith(".html"):
                sources[entry.name] = entry.read_text(encoding="utf-8")
        return cls(sources, None)

    @classmethod
    def load_directory(cls, directory: str, fallback: ErrorPages) -> ErrorPages:
        """Parse every ``*.html`` in ``directory`` now; raise ErrorPagesError if unusable."""
        import jinja2

        files = sorted(glob.glob(os.path.join(glob.escape(directory), "*.html")))
        if not files:
            raise ErrorPagesError("unable to load error pages")
        sources: dict[str, str] = {}
        try:
            for path in files:
                with open(path, encoding="utf-8") as handle:
                    sources[os.path.basename(path)] = _translate_go_template(handle.read())
            templates = _compile(sources)
        except (OSError, UnicodeDecodeError, jinja2.TemplateError):
            raise ErrorPagesError("unable to load error pages") from None
        return cls(sources, fallback, templates)

    def render(self, status: int, message: str = "") -> bytes:
        if not message:
            cached = self._cache.get(status)
            if cached is not None:
                return cached
        if self._templates is None:
            self._templates = _compile(self._sources)
        template = self._templates.get(status)
        if template is None:
            if self._fallback is not None:
                return self._fallback.render(status, message)
            body = f"<h1>{status} {html.escape(reason_phrase(status))}</h1>".encode()
        else:
            try:
                text = template.render(
                    message=message, status=status, status_text=reason_phrase(status)
                )
                body = str(text).encode("utf-8")
            except Exception:  # a runtime template error must not break the error path
                body = f"<h1>{status} {html.escape(reason_phrase(status))}</h1>".encode()
        if not message:
            self._cache[status] = body
        return body
