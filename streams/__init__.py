"""frwatch's detector: a pure core (`streams.core`), the Faust application (`streams.app`), the CLI."""

__version__ = "0.1.0"
