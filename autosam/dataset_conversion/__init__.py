"""Converters from other dataset layouts to autosam's (nnU-Net v2's) raw format."""
