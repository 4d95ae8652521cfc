"""``autosam_plugins``: list every plugin, its distribution and version, its hooks and what it registers."""
from __future__ import annotations

import json
import sys
import warnings

from autosam.cli.common import Parser, command
from autosam.plugins import PluginInfo, PluginSystem, get_plugin_system, hook_names


def describe(system: PluginSystem) -> dict:
    """A JSON-serialisable description of all plugins (loaded and failed)."""
    rows = []
    seen = set()
    for info in [*system.plugins, *system.failed_plugins]:
        if info.name in seen:
            continue
        seen.add(info.name)
        loaded = any(p is info for p in system.plugins)
        rows.append(_row(system, info, loaded))
    rows.sort(key=lambda r: (r["status"] == "failed", r["distribution"].lower() != "autosam", r["distribution"].lower(), r["name"]))
    return {"hooks": hook_names(), "plugins": rows, "replacements": list(system.replacements)}


def _row(system: PluginSystem, info: PluginInfo, loaded: bool) -> dict:
    registered = system.registered_by(info.name) if loaded else {"methods": [], "planners": [], "backbones": []}
    return {
        "name": info.name,
        "module": info.module,
        "distribution": info.distribution,
        "version": info.version,
        "status": "failed" if not loaded else ("error" if info.error else "loaded"),
        "error": info.error,
        "hooks": list(info.hooks),
        **registered,
    }


def format_text(description: dict) -> str:
    lines = []
    for row in description["plugins"]:
        status = {"loaded": "", "error": "  [ERROR]", "failed": "  [FAILED TO LOAD]"}[row["status"]]
        lines.append(f"{row['name']}  ({row['distribution']} {row['version']}, {row['module']}){status}")
        if row["hooks"]:
            lines.append(f"    hooks:     {', '.join(row['hooks'])}")
        for kind in ("methods", "planners", "backbones"):
            if row[kind]:
                lines.append(f"    {kind + ':':<10} {', '.join(row[kind])}")
        if row["error"]:
            lines.append(f"    error:     {row['error']}")
    if not description["plugins"]:
        lines.append("no autosam plugins installed (entry point group 'autosam')")
    for message in description["replacements"]:
        lines.append(f"warning: {message}")
    n_failed = sum(r["status"] != "loaded" for r in description["plugins"])
    n_replaced = len(description["replacements"])
    lines.append(f"{len(description['plugins'])} plugins, {n_failed} with errors"
                 + (f", {n_replaced} replacement(s) of an already registered name" if n_replaced else ""))
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_plugins",
        description="List every autosam plugin (entry point group 'autosam'): its distribution and version, the "
        "hooks it implements and the methods, planners and backbones it registers. Plugins that failed to "
        "load are listed with their error; a plugin that registers a name another plugin already registered "
        "(e.g. a third-party package replacing a built-in method) is reported with a warning.",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any plugin failed to load or register, or replaced a method, planner or "
                   "backbone that another plugin (e.g. autosam itself) registered")
    return p


@command("autosam_plugins", status=1)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are part of the listing below
        description = describe(get_plugin_system())
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        print(format_text(description))
    for message in description["replacements"]:
        print(f"warning: {message}", file=sys.stderr)
    failed = any(r["status"] != "loaded" for r in description["plugins"])
    if args.strict and (failed or description["replacements"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
