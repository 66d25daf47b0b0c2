"""The SQL of the read models, from ``projections/queries.sql``."""

from events.sql import load_queries

Q = load_queries("projections")
