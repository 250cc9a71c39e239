"""Exceptions of the model store. Messages name the version, file or tensor that is wrong."""
from __future__ import annotations


class ArtifactError(Exception):
    """An artifact is missing, unreadable or fails verification (checksum, JSON, schema, shapes)."""


class VersionNotFoundError(ArtifactError):
    """No published version has this id."""


class RegistryError(Exception):
    """A registry operation is refused (activate/rollback/delete) and the registry is unchanged."""
