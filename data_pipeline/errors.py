"""Errors of the data pipeline that are the user's to fix (the CLI prints them as one line)."""


class DataError(ValueError):
    """Bad data input: a missing or unreadable file, an empty corpus, an invalid option value."""


class ShardError(DataError):
    """A shard is missing, truncated or corrupt; the message names the shard file."""


class MissingData(DataError, FileNotFoundError):
    """A data directory, manifest, shard or tokenizer file that is not there."""
