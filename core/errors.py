"""Exceptions for problems the user can fix; the CLI prints them without a traceback."""


class LmforgeError(Exception):
    """A problem with the input, config or environment; the message says how to fix it."""


class ConfigError(LmforgeError):
    """A config file or override that does not validate."""


class DataError(LmforgeError):
    """A bad record in strict mode, or unreadable input; the message names file and line."""


class RegistryError(LmforgeError):
    """An unknown or duplicate component name."""


class PluginError(LmforgeError):
    """A plugin that failed to load or register, fatal under LMFORGE_STRICT_PLUGINS=1."""


class ExportError(LmforgeError):
    """An export that failed, or whose bundle does not match the run; the message has figures."""
