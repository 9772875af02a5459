"""Plugin machinery: discovery through entry points, the per-run plugin manager, the typed facade the core calls
every hook through, the core's fallback answers, option listings, the hook reference and `adapt new-plugin`."""
