"""The model of a run: building it with every method applied, the `Head` base class, inference, weights on disk,
where each parameter came from and the checkpoint's own MLM head."""
