"""veil: run unmodified programs with attested secrets, protected volumes and transparent TLS.

The package is split into parts (see docs/overview.md): policy, crypto, tee, cas, client,
runtime, cli. Dependencies point one way: cli -> runtime/client/cas -> tee/policy -> crypto.
"""

__version__ = "0.1.0"
