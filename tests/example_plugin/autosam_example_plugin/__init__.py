"""An example third-party autosam plugin (see ``plugin.py`` for the hooks it implements)."""

__version__ = "0.1.0"
