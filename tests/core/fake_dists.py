"""Builds throwaway installed distributions (dist-info + modules) for plugin discovery tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(root: Path, name: str, version: str, entry_points: dict[str, str],
                      modules: dict[str, str]) -> Path:
    """Write `name`'s dist-info with `lmforge` entry points and its modules under `root`."""
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = ["[lmforge]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return root


GOOD_PLUGIN = '''
    """A working third-party plugin."""
    from lmforge import hookimpl
    from lmforge import DataSource


    class Numbers(DataSource):
        """Counts from zero."""

        def records(self):
            for i in range(3):
                yield {"text": str(i), "source": f"numbers:{i}"}

        def fingerprint(self):
            return "numbers"


    @hookimpl
    def register_data_sources(register):
        register("numbers", Numbers)
'''

BROKEN_IMPORT = '''
    """A plugin whose import fails."""
    import lmforge_no_such_module  # noqa: F401
'''

RAISING_HOOK = '''
    """A plugin whose registration hook raises after registering one component."""
    from lmforge import hookimpl
    from lmforge import DataSource


    class Half(DataSource):
        """Registered before the failure."""

        def records(self):
            return iter(())

        def fingerprint(self):
            return "half"


    @hookimpl
    def register_data_sources(register):
        register("half", Half)
        raise RuntimeError("registration exploded")
'''

DUPLICATE_NAME = '''
    """A plugin that registers a name a built-in already has."""
    from lmforge import hookimpl
    from lmforge import DataSource


    class Shadow(DataSource):
        """Tries to replace the built-in text source."""

        def records(self):
            return iter(())

        def fingerprint(self):
            return "shadow"


    @hookimpl
    def register_data_sources(register):
        register("text", Shadow)
'''

MISSPELLED_HOOK = '''
    """A plugin implementing a hook that does not exist."""
    from lmforge import hookimpl


    @hookimpl
    def register_datasources(register):
        pass
'''

BROKEN_COMMAND = '''
    """A plugin whose command hook adds one command and then raises."""
    import click

    from lmforge import hookimpl


    @click.command("half-added")
    def half_added():
        """Added before the failure."""


    @hookimpl
    def register_commands(cli):
        cli.add_command(half_added)
        raise RuntimeError("commands exploded")
'''
