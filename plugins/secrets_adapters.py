"""Secrets adapters for ``shipyard secrets fetch -a NAME``.

Only Kamal's ``test`` adapter (every secret's value is its name reversed) ships today;
password-manager adapters (1Password, Bitwarden...) are plugins implementing
``shipyard_secrets_adapter`` for their name.
"""

from __future__ import annotations

from shipyard.core import hookimpl
from shipyard.core.secrets import SecretsAdapter


class ReversingTestAdapter:
    """Kamal's ``test`` adapter: lets secrets plumbing be tested without a vault."""

    def fetch(self, secrets: list[str], account: str | None, from_: str | None) -> dict[str, str]:
        prefix = f"{from_}/" if from_ else ""
        return {f"{prefix}{name}": name[::-1] for name in secrets}


@hookimpl(trylast=True)
def shipyard_secrets_adapter(name: str) -> SecretsAdapter | None:
    if name == "test":
        return ReversingTestAdapter()
    return None
