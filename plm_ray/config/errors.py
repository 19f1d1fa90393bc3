"""The error every refused input raises: the CLI prints it as one line and exits 2."""

from __future__ import annotations

CACHE = "cache"  # the store's folder for what runs share (tokenized corpora, tokenizers); no run may take it


class ConfigError(ValueError):
    """A user-facing configuration or input problem: one line naming the key, file or value."""
