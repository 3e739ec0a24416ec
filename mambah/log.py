"""Logging: the library logs through ``logging.getLogger(__name__)``; only the CLI configures it."""

import logging

logging.getLogger("mambah").addHandler(logging.NullHandler())
