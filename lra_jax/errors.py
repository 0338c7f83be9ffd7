"""Errors raised for bad input: each message says what went wrong and what to do."""


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and valid values."""


class DataNotFoundError(FileNotFoundError):
  """Input data is missing; the message says where to get it and how to prepare it."""
