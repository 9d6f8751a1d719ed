"""Kamal's command tree, as a table, so ``shipyard --help`` lists it without importing
any command module (start-up time is a feature)."""

from __future__ import annotations

#: top-level name → (module in shipyard.core.cli, attribute, one-line help)
TOP_LEVEL: dict[str, tuple[str, str, str]] = {
    "accessory": ("cmd_accessory", "accessory", "Manage accessories (db/redis/search)"),
    "app": ("cmd_app", "app", "Manage application"),
    "audit": ("cmd_main", "audit", "Show audit log from servers"),
    "broadcast": ("cmd_main", "broadcast", "Send a message through the broadcast plugins (and the audit log)"),
    "build": ("cmd_build", "build", "Build application image"),
    "config": ("cmd_main", "config", "Show combined config (secrets redacted)"),
    "deploy": ("cmd_main", "deploy", "Deploy app to servers"),
    "details": ("cmd_main", "details", "Show details about all containers"),
    "docs": ("cmd_main", "docs", "Show configuration documentation"),
    "init": ("cmd_main", "init", "Create config stub in config/deploy.yml and secrets stub in .shipyard"),
    "lock": ("cmd_lock", "lock", "Manage the deploy lock"),
    "plugins": ("cmd_main", "plugins", "List plugins and the hooks they implement"),
    "proxy": ("cmd_proxy", "proxy", "Manage shipyard-proxy"),
    "prune": ("cmd_prune", "prune", "Prune old application images and containers"),
    "redeploy": ("cmd_main", "redeploy", "Deploy app to servers without bootstrapping servers, starting the proxy and pruning"),
    "registry": ("cmd_registry", "registry", "Login and -out of the image registry"),
    "remove": ("cmd_main", "remove", "Remove the proxy, app, accessories, and registry session from servers"),
    "rollback": ("cmd_main", "rollback", "Rollback app to VERSION"),
    "secrets": ("cmd_secrets", "secrets", "Helpers for extracting secrets"),
    "server": ("cmd_server", "server", "Bootstrap servers with curl and Docker"),
    "setup": ("cmd_main", "setup", "Setup all accessories, push the env, and deploy app to servers"),
    "upgrade": ("cmd_main", "upgrade", "Upgrade from Kamal 1.x to 2.0"),
    "version": ("cmd_main", "version", "Show shipyard version"),
}

COMMAND_NAMES: frozenset[str] = frozenset(TOP_LEVEL) | {"help"}
