"""edgeml's shared kernel: bundle format, signing and trust, hardware profiles, data contract,
drift statistics, errors and the CLI root.

The kernel imports numpy, onnxruntime and cryptography only; it never imports a side
(converters, agent, fleet) except lazily from the CLI.
"""

from edgeml.toolkit._version import __version__

__all__ = ["__version__"]
