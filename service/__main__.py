"""``python -m service`` is the ``jobtrail`` command."""

import sys

from service.cli import main

sys.exit(main())
