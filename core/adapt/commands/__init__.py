"""The command line: `adapt` and its subcommands, each in a module of its own, imported only when it runs."""
