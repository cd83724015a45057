"""`lmforge plugins install` and `uninstall`: pip in lmforge's own environment, undone when a new
plugin does not load."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib.metadata import Distribution, distributions, entry_points
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.host.manager import BUILTIN_DISTRIBUTION, GROUP, PluginFailure

# a plugin's requirements never replace these: a bare `torch` could fetch a multi-GB CUDA build
PINNED = ("torch", BUILTIN_DISTRIBUTION)
REASON_LINES = 40  # the end of pip's output, shown as its reason
# the distribution name a requirement starts with (`name`, `name[extra]>=1`, `name @ url`)
REQUIREMENT_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:$|[\[<>=!~;@(])")

console = Console()
err_console = Console(stderr=True)


class PipFailed(click.ClickException):
    """pip failed, or what it installed does not load as a plugin: exit status 1."""

    def show(self, file=None) -> None:
        err_console.print(f"lmforge: error: {self.message}", markup=False, highlight=False,
                          soft_wrap=True)


def _canonical(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip(*args: str) -> subprocess.CompletedProcess:
    if find_spec("pip") is None:
        raise LmforgeError(f"pip is not installed in the environment lmforge runs in "
                           f"({sys.executable}); `{sys.executable} -m ensurepip` installs it")
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args], capture_output=True, text=True)


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-REASON_LINES:])


def _versions() -> dict[str, str]:
    """Installed distributions, canonical name -> version, each the one that imports first."""
    importlib.invalidate_caches()
    found: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_canonical(name), dist.version)
    return found


def _plugin_distributions() -> dict[str, Distribution]:
    """Installed distributions that declare `lmforge` entry points, by canonical name."""
    importlib.invalidate_caches()
    return {_canonical(ep.dist.name): ep.dist for ep in entry_points(group=GROUP) if ep.dist}


def _plugin_names(dist: Distribution) -> list[str]:
    return sorted(ep.name for ep in dist.entry_points.select(group=GROUP))


def _write_constraints(folder: Path) -> Path:
    versions = _versions()
    path = folder / "constraints.txt"
    path.write_text("".join(f"{name}=={versions[name]}\n" for name in PINNED if name in versions),
                    encoding="utf-8")
    return path


def _restore(before: dict[str, str], installed: set[str], constraints: Path) -> list[str]:
    """Uninstall what pip installed and put back the versions found before; returns what still
    differs from `before`."""
    removable = installed - set(PINNED)  # a broken reinstall of these still beats none at all
    if removable:
        _pip("uninstall", "--yes", *sorted(removable))
    now = _versions()
    lost = [f"{name}=={version}" for name, version in before.items() if now.get(name) != version]
    if lost:
        _pip("install", "--no-deps", "--constraint", str(constraints), *lost)
    now = _versions()
    return [f"{name} {before.get(name, '(not installed)')} (now {now.get(name, 'not installed')})"
            for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]


def _check_env(dists: dict[str, Distribution]) -> dict[str, str]:
    """The environment with the plugin switches set so that `dists`' plugins load."""
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_STRICT_PLUGINS"}
    names = {d.name for d in dists.values()}
    if "LMFORGE_LOAD_PLUGINS" in env:
        env["LMFORGE_LOAD_PLUGINS"] = ",".join([env["LMFORGE_LOAD_PLUGINS"], *sorted(names)])
    if "LMFORGE_DISABLE_PLUGINS" in env:
        mine = names | {p for d in dists.values() for p in _plugin_names(d)}
        env["LMFORGE_DISABLE_PLUGINS"] = ",".join(
            part for part in env["LMFORGE_DISABLE_PLUGINS"].split(",") if part.strip() not in mine)
    return env


def _load_check(dists: dict[str, Distribution]) -> tuple[dict[str, Any], list[str]]:
    """Load `dists`' plugins in a fresh lmforge (entry points are read when it starts): their part
    of the `plugins list --json` listing, and what went wrong."""
    result = subprocess.run([sys.executable, "-m", "lmforge", "plugins", "list", "--json"],
                            capture_output=True, text=True, env=_check_env(dists))
    try:
        listing = json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"plugins": [], "failed": []}, [
            f"lmforge does not start with it installed:\n{_tail(result.stderr)}"]
    listing = {key: [p for p in listing[key] if _canonical(p["distribution"]) in dists]
               for key in ("plugins", "failed")}
    problems = [PluginFailure(**f, traceback="").describe() for f in listing["failed"]]
    seen = {(_canonical(p["distribution"]), p["name"])
            for p in listing["plugins"] + listing["failed"]}
    problems += [f"plugin {plugin!r} ({dist.name} {dist.version}) did not load: a plugin of that "
                 f"name from another distribution loaded first"
                 for key, dist in dists.items() for plugin in _plugin_names(dist)
                 if (key, plugin) not in seen]
    return listing, problems


def _named(requirements: tuple[str, ...]) -> set[str]:
    """The distributions the requirements name (local paths and URLs name none)."""
    return {_canonical(match.group(1)) for r in requirements
            if not Path(r).exists() and (match := REQUIREMENT_NAME.match(r))}


@click.command("install")
@click.argument("requirements", nargs=-1, required=True, metavar="NAME...")
@click.option("--upgrade", "-U", is_flag=True,
              help="Upgrade what is already installed to the newest version (pip's --upgrade).")
@click.option("--editable", "-e", is_flag=True,
              help="Install local source folders in editable mode (pip's --editable).")
def plugins_install(requirements: tuple[str, ...], upgrade: bool, editable: bool) -> None:
    """Install plugin distributions and show their plugins and components.

    NAME is anything pip installs: a requirement (lmforge-sqlite, 'lmforge-sqlite>=0.2'), a local
    folder or archive, a URL. pip runs as `python -m pip` of the interpreter lmforge runs in, with
    torch and lmforge constrained to their installed versions, so installing a plugin never
    replaces them (nor fetches another torch build). The new plugins are then loaded once: if pip
    fails, or a new plugin does not load, what this command installed is uninstalled again and it
    exits 1 with the reason.
    """
    from lmforge.cli.render import plugins_table

    if editable:
        not_folders = [r for r in requirements if not Path(r).is_dir()]
        if not_folders:
            raise LmforgeError(f"--editable installs local source folders; not a folder: "
                               f"{', '.join(not_folders)}")
    targets = [a for r in requirements for a in ("--editable", r)] if editable else requirements
    before = _versions()
    with tempfile.TemporaryDirectory(prefix="lmforge-pip-") as tmp:
        constraints = _write_constraints(Path(tmp))
        report = Path(tmp) / "report.json"
        with err_console.status(f"pip install {' '.join(requirements)}"):
            result = _pip("install", "--constraint", str(constraints), "--report", str(report),
                          *(["--upgrade"] if upgrade else []), *targets)
        if result.returncode != 0:
            changed = {name for name, version in _versions().items()
                       if before.get(name) != version}
            left = _restore(before, changed, constraints)
            raise PipFailed(f"pip could not install {' '.join(requirements)}; "
                            f"{_outcome(left)}. pip said:\n{_tail(result.stderr)}")
        installed = {_canonical(item["metadata"]["name"]): item["metadata"]["version"]
                     for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
        plugin_dists = {name: dist for name, dist in _plugin_distributions().items()
                        if name in set(installed) | _named(requirements)}
        if not plugin_dists:
            if not installed:
                raise LmforgeError(f"{' '.join(requirements)}: already installed, and not an "
                                   f"lmforge plugin (no {GROUP!r} entry points)")
            left = _restore(before, set(installed), constraints)
            raise PipFailed(f"{_described(installed)}: not an lmforge plugin (no {GROUP!r} entry "
                            f"points); {_outcome(left)}")
        listing, problems = _load_check(plugin_dists)
        if problems and installed:
            left = _restore(before, set(installed), constraints)
            raise PipFailed(f"installed {_described(installed)}, but it does not load; "
                            f"{_outcome(left)}:\n" + "\n".join(problems))
    if installed:
        console.print(f"installed {_described(installed)}")
    else:
        console.print("already installed (--upgrade installs newer versions)")
    console.print(plugins_table(listing, title="plugins"))
    if problems:
        raise PipFailed("\n".join(problems))


def _described(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))


def _outcome(left: list[str]) -> str:
    if not left:
        return "the environment is as it was"
    return f"these could not be put back as they were: {'; '.join(left)}"


def _resolve(name: str, plugin_dists: dict[str, Distribution]) -> Distribution:
    """The installed plugin distribution called `name`; lmforge and its built-ins are refused."""
    if _canonical(name) == BUILTIN_DISTRIBUTION:
        raise LmforgeError("refusing to uninstall lmforge itself: `lmforge plugins uninstall` "
                           "removes plugins (pip removes lmforge)")
    builtin = plugin_dists.get(BUILTIN_DISTRIBUTION)
    if builtin is not None and name in _plugin_names(builtin):
        raise LmforgeError(f"{name!r} is a built-in plugin, part of lmforge, and cannot be "
                           f"uninstalled; LMFORGE_DISABLE_PLUGINS={name} turns it off")
    dist = plugin_dists.get(_canonical(name))
    if dist is None:
        installed = "; ".join(f"{dist.name} (plugins: {', '.join(_plugin_names(dist))})"
                              for key, dist in sorted(plugin_dists.items())
                              if key != BUILTIN_DISTRIBUTION) or "none"
        raise LmforgeError(f"{name!r} is not an installed plugin distribution; installed: "
                           f"{installed}")
    return dist


@click.command("uninstall")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def plugins_uninstall(names: tuple[str, ...]) -> None:
    """Uninstall plugin distributions (pip uninstall) from the environment lmforge runs in.

    NAME is a distribution that provides plugins (lmforge-sqlite). lmforge itself and its
    built-in plugins are refused.
    """
    plugin_dists = _plugin_distributions()
    chosen = {_canonical(dist.name): dist for dist in (_resolve(n, plugin_dists) for n in names)}
    # read before pip removes the metadata they come from
    described = {key: f"{dist.name} {dist.version} (plugins: {', '.join(_plugin_names(dist))})"
                 for key, dist in chosen.items()}
    with err_console.status(f"pip uninstall {' '.join(d.name for d in chosen.values())}"):
        result = _pip("uninstall", "--yes", *(dist.name for dist in chosen.values()))
    if result.returncode != 0:
        raise PipFailed(f"pip could not uninstall {', '.join(chosen)}. pip said:\n"
                        f"{_tail(result.stderr)}")
    remaining = _versions()
    for key in chosen:
        if key not in remaining:
            console.print(f"uninstalled {described[key]}")
    kept = [f"{dist.name} {remaining[key]}" for key, dist in chosen.items() if key in remaining]
    if kept:
        raise PipFailed(f"still installed after pip uninstall: {', '.join(kept)}. pip said:\n"
                        f"{_tail(result.stdout + result.stderr)}")
