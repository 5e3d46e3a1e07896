"""Datasets by name (plain dict registry). See docs/design.md for the contract."""
