"""The `frwatch` command line."""
