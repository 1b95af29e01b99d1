"""Converters between checkpoint layouts (being written)."""
