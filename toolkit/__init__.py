"""edgeml's shared kernel: bundle format, signing and trust, hardware profiles, data contract,
drift statistics, errors and the CLI root.

The kernel imports numpy, onnxruntime and cryptography only; it never imports a side
(converters, agent, fleet) except lazily from the CLI.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeml")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
