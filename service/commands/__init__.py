"""The ``jobtrail`` subcommands, one module per command or family of commands.

A command module has a ``register(commands)`` function that adds its subparser(s) to the
``jobtrail`` parser and sets ``handler``: a function of the parsed arguments returning the exit
code. ``service.cli.COMMANDS`` lists the modules' ``register`` functions in the order ``--help``
shows them, so adding a command is a new module plus one line there. The plumbing they share
(settings, the database, exit codes, tables, JSON, progress bars) is in ``common``.
"""
