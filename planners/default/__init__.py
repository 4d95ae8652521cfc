"""Built-in autosam plugins."""
