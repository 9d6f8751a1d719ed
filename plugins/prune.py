"""Pruning (``shipyard_prune``): old stopped containers and the images nobody uses.

Per host, for the service (all roles and destinations, as Kamal): keep the newest
``retain_containers`` stopped containers and remove the rest; then remove every image tag
of the service that no remaining container uses, except ``latest[-dest]``; then dangling
images. A running container's image is always in use, so it is never removed. What is
kept is exactly what ``rollback`` needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.core import hookimpl
from shipyard.core.records import PruneResult

if TYPE_CHECKING:
    from shipyard.core.context import Context
    from shipyard.core.transport import Transport

STOPPED = ("created", "exited", "dead")
# One listing: containers, a separator, then image tags.
_LIST = (
    'docker ps --all --filter "label=service=$1" --format "{{.ID}} {{.State}} {{.Image}}" && echo "---8<---" && '
    'docker image ls --filter "label=service=$1" --format "{{.Repository}}:{{.Tag}}"'
)
# $1 service, $2 "dangling" to prune dangling images too; then container ids up to "--",
# then image tags. (Container ids are docker's hex ids, safe to word-split.)
_REMOVE = (
    'service=$1; dangling=$2; shift 2; containers=""; '
    'while [ "$#" -gt 0 ] && [ "$1" != -- ]; do containers="$containers $1"; shift; done; shift; '
    '[ -z "$containers" ] || docker rm $containers >/dev/null; [ "$#" -eq 0 ] || docker image rm "$@" >/dev/null; '
    '[ "$dangling" != dangling ] || docker image prune --force --filter "label=service=$service" >/dev/null'
)


def _is_latest(reference: str) -> bool:
    """``:latest`` and ``:latest-<dest>`` name what each destination runs: never pruned."""
    tag = reference.rsplit(":", 1)[-1]
    return tag == "latest" or tag.startswith("latest-")


def plan(listing: str, *, retain: int) -> tuple[list[str], list[str]]:
    """(containers to remove, image tags to remove) from the host's listing."""
    containers_part, _, images_part = listing.partition("---8<---\n")
    containers = [line.split(" ", 2) for line in containers_part.splitlines() if line.count(" ") >= 2]
    stopped = [c for c in containers if c[1] in STOPPED]  # newest first, as docker ps lists
    doomed = {c[0] for c in stopped[retain:]}
    in_use = {image for cid, _, image in containers if cid not in doomed}
    tags = [t for t in images_part.split() if not t.endswith(":<none>")]
    unused = [t for t in tags if t not in in_use and not _is_latest(t)]
    return [c[0] for c in stopped[retain:]], unused


def prune_host(ctx: Context, host: str, *, containers: bool = True, images: bool = True,
               retain: int | None = None) -> PruneResult:
    config = ctx.config
    transport = ctx.connections.get(host)
    listing = transport.check(["sh", "-c", _LIST, "sh", config.service]).stdout
    doomed_containers, doomed_images = plan(listing, retain=retain or config.schema.retain_containers)
    doomed_containers = doomed_containers if containers else []
    doomed_images = doomed_images if images else []
    dangling = "dangling" if images else "keep"
    transport.check(["sh", "-c", _REMOVE, "sh", config.service, dangling, *doomed_containers, "--", *doomed_images])
    if containers:
        ctx.audit("Pruned containers", hosts=[host])
    if images:
        ctx.audit("Pruned images", hosts=[host])
    return PruneResult(host, tuple(doomed_containers), tuple(doomed_images))


def prune_command(ctx: Context, *, containers: bool, images: bool, retain: int | None) -> None:
    """``prune containers`` / ``prune images``: one half of the built-in prune."""
    from shipyard.core.lock import deploy_lock
    from shipyard.core.parallel import on_hosts, report

    def on(transport: Transport) -> str:
        result = prune_host(ctx, transport.host, containers=containers, images=images, retain=retain)
        return f"Pruned {len(result.removed_containers)} containers and {len(result.removed_images)} images"

    with deploy_lock(ctx):
        report(ctx, on_hosts(ctx, ctx.hosts, on), lambda line: line)


@hookimpl(trylast=True)
def shipyard_prune(ctx: Context, host: str) -> PruneResult:
    return prune_host(ctx, host)
