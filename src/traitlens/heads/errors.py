"""The one error kind of the heads package."""

from traitlens.errors import TraitlensError


class HeadError(TraitlensError):
    """A head (probe, zero-shot prompts, text concept) cannot be trained, read or attached as asked."""
