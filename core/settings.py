"""Base class for component settings: typed, defaults filled in, unknown keys rejected."""

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Settings of one component. Subclass it and declare each setting with a type and a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoSettings(Settings):
    """For components that take no settings."""
