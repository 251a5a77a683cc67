"""The error families of edgeml, each carrying the exit code the CLI turns it into.

Families are split by whose fault a failure is (DESIGN.md, exit codes):

- 2, bad usage or bad input: ``InputError``, ``ConfigError``, ``ProfileError``, ``ConversionError``
- 3, refused for security: ``BundleError`` (signature, hash, untrusted or revoked key, entries,
  sizes, expiry, downgrade), ``TrustError`` (a trust document that does not verify)
- 4, a quality gate failed: ``GateError`` (budgets, conversion that does not reproduce its source)

Anything else that escapes is a bug and exits 1. The CLI catches ``EdgeMLError`` once.
"""

from __future__ import annotations


class EdgeMLError(Exception):
    """Root of every error edgeml raises on purpose."""

    exit_code: int = 1


class InputError(EdgeMLError):
    """A file, row, column or argument the user gave is wrong."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration file (agent config, key file) is missing a key or holds a wrong value."""


class ProfileError(ConfigError):
    """A hardware profile is unknown or its TOML is invalid."""


class ConversionError(InputError):
    """A model cannot be loaded or converted (unsupported estimator, untrusted skops types)."""


class BundleError(EdgeMLError):
    """A bundle was refused: signature, hash, key, entries or sizes do not verify."""

    exit_code = 3


class TrustError(EdgeMLError):
    """A trust document was refused: malformed, not signed by the keys it must be signed by, not
    newer than the trust it would replace, expired, or taking back a revocation."""

    exit_code = 3


class GateError(EdgeMLError):
    """A quality gate failed: a budget is broken or the ONNX model does not match its source."""

    exit_code = 4


ISSUES_URL = "https://github.com/edgeml/edgeml/issues"


def bug_report_line(error: BaseException) -> str:
    """What a command prints under the traceback of an exception it did not expect."""
    return (
        f"unexpected failure ({type(error).__name__}: {error}); this is a bug in edgeml, "
        f"please report it at {ISSUES_URL} with the trace above"
    )
