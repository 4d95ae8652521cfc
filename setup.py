# Metadata lives in setup.cfg; this shim only exists for old pip versions.
from setuptools import setup

setup()
