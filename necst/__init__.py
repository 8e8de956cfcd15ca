"""necst: learn traffic from captures, write valid synthetic captures, stress-test a detector."""
from necst._version import SCHEMA_VERSION, __version__
from necst.errors import NecstError

__all__ = ["__version__", "SCHEMA_VERSION", "NecstError"]
