"""The project's exceptions: problems caused by the user's input, printed as one line with exit 1.

A leaf module: it imports nothing of the project, so every other module may import it.
"""


class FashionCnnError(Exception):
    """A problem caused by the user's input (params, data, files); printed as one line, exit 1."""


class ConfigError(FashionCnnError):
    """The composed config breaks the schema or describes an impossible model."""


class DataError(FashionCnnError):
    """An input file is missing, corrupt or inconsistent."""
