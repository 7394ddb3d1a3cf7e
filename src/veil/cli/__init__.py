"""The command-line layer: parses arguments, calls the library, prints; no logic of its own."""
