"""The one error a record folder can raise while it is read: which file, which field, what is wrong."""

from __future__ import annotations


class FolderError(ValueError):
    """A record folder that cannot be imported. `file` and `field` name where; str() is one line."""

    def __init__(self, file: str, field: str, message: str):
        self.file = file
        self.field = field
        self.message = " ".join(str(message).split())
        super().__init__(f"{file}: {field}: {self.message}" if field else f"{file}: {self.message}")
