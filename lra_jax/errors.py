"""Errors raised for bad input: each message says what went wrong and what to do."""


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and valid values."""


class DataNotFoundError(FileNotFoundError):
  """Input data is missing; the message says where to get it and how to prepare it."""


def innermost_config_error(error: BaseException | None) -> ConfigError | None:
  """The innermost ConfigError behind `error` (config_flags re-wraps it with a traceback)."""
  found = None
  while error is not None:
    if isinstance(error, ConfigError):
      found = error
    error = error.__cause__ or error.__context__
  return found
