"""User-facing errors: each message says what went wrong and how to fix it; the CLI prints it without a traceback."""


class DnDError(Exception):
    """An error caused by the user's input (config, files, layer names, environment), not by a bug."""


class ConfigError(DnDError):
    """The configuration (YAML or --set overrides) is invalid."""


class ModelLoadError(DnDError):
    """A model or its weights could not be loaded (typically: no hub access)."""
