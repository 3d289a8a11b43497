"""Worker-agent errors, in modelgate's one hierarchy (:mod:`registry.errors`)."""

from __future__ import annotations

from registry.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError


class ArtifactError(InvalidArgumentError):
    """An artifact was rejected (corrupt, checksum mismatch, unsafe entries, too large...)."""


class ArtifactUnavailableError(UnavailableError):
    """An artifact could not be fetched right now (network, server error); retrying may help."""


class BackendError(FailedPreconditionError):
    """The model server refused or failed an operation (load error, not ready in time)."""


class BackendUnavailableError(UnavailableError):
    """The model server cannot be reached."""
