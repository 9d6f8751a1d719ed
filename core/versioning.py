"""The version being deployed, from git when not given explicitly."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from shipyard.core.errors import ShipyardError


def _git(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, check=False)


def git_version(project_dir: Path, *, working_tree: bool) -> str:
    """HEAD's sha. When the build uses the working tree and it has changes, append
    ``_uncommitted_<16 hex>`` (a hash of those changes), so two different dirty trees
    never share a tag."""
    head = _git(project_dir, "rev-parse", "HEAD")
    if head.returncode != 0:
        raise ShipyardError(
            "cannot work out the version: no git commit here (pass --version VERSION or set $VERSION)"
        )
    sha = head.stdout.strip()
    if not working_tree:
        return sha
    status = _git(project_dir, "status", "--porcelain", "--untracked-files=normal").stdout
    if not status.strip():
        return sha
    digest = hashlib.sha256(status.encode())
    digest.update(_git(project_dir, "diff", "HEAD").stdout.encode())
    return f"{sha}_uncommitted_{digest.hexdigest()[:16]}"
