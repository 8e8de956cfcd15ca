__version__ = "0.1.0"
# Bumped whenever a column of a table in necst.schema changes meaning or type.
SCHEMA_VERSION = 1
