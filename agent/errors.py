"""The agent's exception families; bad input is a value (barcode.Rejection), broken machinery raises these."""


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The site configuration is invalid; the message names the key path and the fix."""


class StorageError(AgentError):
    """The scan store could not do what was asked; ``code`` names the failure for status and logs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StorageFull(StorageError):
    """Free disk space is at or below the floor, or SQLite reported SQLITE_FULL."""

    def __init__(self, message: str) -> None:
        super().__init__("storage_full", message)


class DriverError(AgentError):
    """A scanner could not be opened or read; the message names the scanner."""
