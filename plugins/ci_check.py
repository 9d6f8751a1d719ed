"""CI check: veto a deploy unless CI reports the version green. Opt-in.

Enabled by an ``x-shipyard.ci_check`` block in ``config/deploy.yml``::

    x-shipyard:
      ci_check:
        url: https://api.github.com/repos/acme/app/commits/{sha}/status
        token_secret: GITHUB_TOKEN   # sent as `Authorization: Bearer ...`
        wait: 600                    # keep polling while CI is pending (default 0)

Under the deploy lock, before any server changes (``shipyard_pre_deploy``), it GETs the
URL and reads GitHub's combined-status shape (``{"state", "sha", "statuses": [...]}``).
``success`` allows the deploy; ``failure``, ``error`` and ``pending`` (once ``wait`` is
spent) veto it, naming the contexts that are not green. It fails closed: an unreachable
URL, a non-200 answer or a body that is not a combined status also vetoes. This is
Kamal's sample ``pre-deploy`` hook, built in.

"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from shipyard.core import __version__, hookimpl
from shipyard.core.config.plugin_settings import Problem, load_plugin_settings, positive, show
from shipyard.core.errors import SecretNotFound
from shipyard.core.records import Veto
from shipyard.plugins._http import http_failure, is_http_url, shown_url

if TYPE_CHECKING:
    import urllib.request

    from shipyard.core.context import Context

NAME = "ci_check"
STATES = ("success", "pending", "failure", "error")
_MAX_BODY = 4 * 1024 * 1024  # a combined status is a few KB; never buffer something huge
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")



@dataclass(frozen=True)
class CiCheckSettings:
    """``x-shipyard.ci_check``. Validated by pydantic (a ``TypeAdapter``), declared as a
    stdlib dataclass so importing this plugin does not import pydantic."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    url: str
    token_secret: str | None = None
    timeout: float = 10
    wait: float = 0
    interval: float = 5
    skip_for: tuple[str, ...] = ("rollback",)

    def problems(self) -> Iterator[Problem]:
        filled = self.url.replace("{version}", "v").replace("{sha}", "0")
        if not is_http_url(filled):
            yield ("url",), f"expected an http:// or https:// URL, got {show(self.url)}"
        if self.token_secret is not None and not self.token_secret.strip():
            yield ("token_secret",), "is empty: name a secret from .shipyard/secrets, or remove the key"
        yield from positive(self.timeout, "timeout")
        yield from positive(self.interval, "interval")
        if self.wait < 0:
            yield ("wait",), f"must be at least 0 (seconds), got {self.wait:g}"


@dataclass(frozen=True)
class CombinedStatus:
    state: str
    sha: str | None
    statuses: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def not_green(self) -> list[Mapping[str, Any]]:
        return [s for s in self.statuses if s.get("state") != "success"]


class _Unavailable(Exception):
    """The status could not be read; the reason becomes the veto (fail closed)."""


@hookimpl
def shipyard_pre_deploy(ctx: Context) -> Veto | None:
    settings = load_plugin_settings(ctx.config, NAME, CiCheckSettings)
    if settings is None:
        return None
    invoked = " ".join(p for p in (ctx.command, ctx.subcommand) if p)
    if ctx.command in settings.skip_for or invoked in settings.skip_for:
        ctx.output.info(f"CI check skipped for `{invoked}` (x-shipyard.ci_check.skip_for)")
        return None
    return check(ctx, settings)


def check(ctx: Context, settings: CiCheckSettings) -> Veto | None:
    """Poll the status URL until it is green (None), red, or pending past ``wait``."""
    version = ctx.version
    if "_uncommitted_" in version:
        # The image holds changes CI has never seen; a green HEAD says nothing about them.
        return Veto(
            f"version {version} includes uncommitted changes, which CI has not checked; "
            "commit and push them (or deploy with --no-plugin ci_check)"
        )
    sha = _commit_of(ctx, version) if "{sha}" in settings.url else None
    if "{sha}" in settings.url and sha is None:
        return Veto(f"cannot resolve version {version} to a git commit for {{sha}} in x-shipyard.ci_check.url")
    url = _fill(settings.url, version=version, sha=sha or "")
    token = _token(ctx, settings)
    short = (sha or version)[:7]
    ctx.output.info(f"Checking CI status for {short}...")
    deadline = time.monotonic() + settings.wait
    while True:
        try:
            status = _fetch(url, token, settings.timeout)
        except _Unavailable as error:
            return Veto(f"could not check CI status for {short}: {error}")
        short = (status.sha or sha or version)[:7]
        if status.state == "success":
            ctx.output.info(f"CI status for {short} is success")
            return None
        remaining = deadline - time.monotonic()
        if status.state != "pending" or remaining <= 0:
            return Veto(_reason(short, status, waited=settings.wait))
        ctx.output.info(f"CI status for {short} is pending ({_contexts(status) or 'no statuses yet'}); "
                        f"checking again in {settings.interval:g}s")
        time.sleep(min(settings.interval, remaining))


def _reason(short: str, status: CombinedStatus, *, waited: float) -> str:
    after = f" after waiting {waited:g}s" if status.state == "pending" and waited > 0 else ""
    contexts = _contexts(status)
    if not contexts and status.state == "pending":
        # GitHub answers "pending" with no statuses when nothing has reported yet (also
        # when CI only reports check runs, which this endpoint does not include).
        contexts = "no CI statuses have been reported for this commit"
    text = f"CI status for {short} is {status.state}{after}"
    text += f": {contexts}" if contexts else ""
    link = next((s.get("target_url") for s in status.not_green() if s.get("target_url")), None)
    return text + (f"; see {link}" if isinstance(link, str) else "")


def _contexts(status: CombinedStatus) -> str:
    """``ci/build (failed: 3 tests), lint (pending)``: what is not green, and why."""
    shown = []
    for entry in status.not_green():
        why = entry.get("description") or entry.get("state") or "unknown"
        shown.append(f"{entry.get('context') or 'unnamed'} ({why})")
    return ", ".join(shown)


def _commit_of(ctx: Context, version: str) -> str | None:
    """The commit a version names: the version itself when it is a full sha, else what
    git makes of it (a tag or branch name)."""
    if _FULL_SHA.match(version):
        return version
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{version}^{{commit}}"],
        cwd=ctx.project_dir, capture_output=True, text=True, check=False,
    )
    sha = found.stdout.strip()
    return sha if found.returncode == 0 and _FULL_SHA.match(sha) else None


def _fill(url: str, *, version: str, sha: str) -> str:
    from urllib.parse import quote

    # Plain replacement, not str.format: a URL may carry other braces.
    return url.replace("{version}", quote(version, safe="")).replace("{sha}", quote(sha, safe=""))


def _token(ctx: Context, settings: CiCheckSettings) -> str | None:
    if settings.token_secret is None:
        return None
    try:
        return ctx.secrets[settings.token_secret]
    except SecretNotFound as error:
        raise SecretNotFound(f"x-shipyard.ci_check.token_secret: {error}") from error


def _fetch(url: str, token: str | None, timeout: float) -> CombinedStatus:
    import urllib.request

    request = urllib.request.Request(url, headers={
        "Accept": "application/vnd.github+json",
        "User-Agent": f"shipyard/{__version__}",  # GitHub refuses requests without one
    })
    if token is not None:
        # Unredirected: the token must not follow a redirect to another host.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        with _opener().open(request, timeout=timeout) as response:
            code, body = response.status, response.read(_MAX_BODY)
    except Exception as error:
        reason = http_failure(error)
        if reason is None:
            raise
        raise _Unavailable(f"GET {shown_url(url)} failed: {reason}{_auth_hint(error, token)}") from error
    if code != 200:
        raise _Unavailable(f"GET {shown_url(url)} answered HTTP {code}, expected 200")
    try:
        data = json.loads(body)
    except ValueError:
        raise _Unavailable(f"GET {shown_url(url)} did not answer JSON") from None
    state = data.get("state") if isinstance(data, dict) else None
    if state not in STATES:
        raise _Unavailable(
            f"GET {shown_url(url)} did not answer a combined status (expected \"state\" to be one of "
            f"{', '.join(STATES)}, got {show(state)})"
        )
    statuses = data.get("statuses")
    entries = tuple(s for s in statuses if isinstance(s, dict)) if isinstance(statuses, list) else ()
    sha = data.get("sha")
    return CombinedStatus(str(state), sha if isinstance(sha, str) and sha else None, entries)


def _auth_hint(error: BaseException, token: str | None) -> str:
    from urllib.error import HTTPError

    # GitHub answers 404, not 403, for a private repository it will not show you.
    if isinstance(error, HTTPError) and error.code in (401, 403, 404):
        return " (check x-shipyard.ci_check.token_secret)" if token else " (a private repository needs token_secret)"
    return ""


@cache
def _opener() -> urllib.request.OpenerDirector:
    import urllib.request
    from urllib.parse import urlsplit

    class SameOriginAuth(urllib.request.HTTPRedirectHandler):
        """Follow redirects, keeping the token only when the origin stays the same
        (GitHub redirects renamed repositories within api.github.com)."""

        def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                             headers: Any, newurl: str) -> urllib.request.Request | None:
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            auth = req.unredirected_hdrs.get("Authorization")
            old, target = urlsplit(req.full_url), urlsplit(newurl)
            if new is not None and auth and (old.scheme, old.netloc) == (target.scheme, target.netloc):
                new.add_unredirected_header("Authorization", auth)
            return new

    return urllib.request.build_opener(SameOriginAuth)
