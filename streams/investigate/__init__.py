"""Investigations over a replay: which records, two rule sets side by side, and the report."""
