"""`shipyard secrets ...`: fetch secrets from password managers, for .shipyard/secrets."""

from __future__ import annotations

import json

import click

from shipyard.core.cli.runner import command, group
from shipyard.core.context import Context
from shipyard.core.errors import ShipyardError

secrets = group("secrets", help="Helpers for extracting secrets")


@command("fetch", parent=secrets)
@click.option("-a", "--adapter", required=True, help="Which vault adapter to use.")
@click.option("--account", help="The account identifier or username.")
@click.option("--from", "from_", help="A vault or folder to fetch the secrets from.")
@click.option("--inline", is_flag=True, hidden=True)
@click.argument("names", nargs=-1)
def fetch(ctx: Context, adapter: str, account: str | None, from_: str | None, inline: bool, names: tuple[str, ...]) -> None:
    """Fetch secrets from a vault and print them as JSON."""
    values = ctx.hooks.secrets_adapter(adapter).fetch(list(names), account, from_)
    # The whole point is to print them, into a secrets file's $(...): no redaction here.
    click.echo(json.dumps(values))


@command("extract", parent=secrets)
@click.argument("name")
@click.argument("secrets_json", metavar="SECRETS")
def extract(ctx: Context, name: str, secrets_json: str) -> None:
    """Extract a single secret from the results of a fetch call."""
    try:
        values = json.loads(secrets_json)
    except json.JSONDecodeError as error:
        raise ShipyardError(f"SECRETS is not the JSON printed by `shipyard secrets fetch`: {error}") from None
    if name in values:
        click.echo(values[name])
        return
    matches = [value for key, value in values.items() if key.endswith(f"/{name}")]
    if not matches:
        raise ShipyardError(f"Could not find secret {name}")
    click.echo(matches[0])


@command("print", parent=secrets)
def print_(ctx: Context) -> None:
    """Print the secrets (for debugging)."""
    for key, value in ctx.secrets.all().items():
        click.echo(f"{key}={value}")
