"""Every PostgreSQL advisory lock and NOTIFY channel jobtrail uses, defined once.

The ids are arbitrary but must not collide with each other (or, ideally, with other
applications sharing the database): keep them together so a new one is chosen in sight of the
others.
"""

from typing import Final

# Held (transaction-scoped) by every append transaction before it draws positions.
APPEND_LOCK: Final = 7413690201
# Held (transaction-scoped) while a migration is checked and applied.
MIGRATE_LOCK: Final = 7413690202
# Held (session-level) by a replay from start to end: one replay at a time per database, so
# two never build into the same aside tables (projections/replay.py).
REPLAY_LOCK: Final = 7413690203

# Held (session-level, on a connection of its own) by the one serve process that runs the
# projector and the watchdog (service/leader.py).
LEADER_LOCK: Final = 7413690204

# Held (transaction-scoped) while monthly partitions of the log are created, archived or
# restored: by jobtrail_ensure_event_partitions (migration 0006, which hardcodes this number) and
# by ``jobtrail archive`` (events/archive.py).
PARTITION_LOCK: Final = 7413690205

# Appenders NOTIFY here at commit; projectors LISTEN (a wake-up hint only).
EVENTS_CHANNEL: Final = "jobtrail_events"
