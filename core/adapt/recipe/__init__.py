"""Recipes as data: the TOML loader that validates a whole recipe at once, the core's own tables, optimizer options
and a sweep's space file."""
