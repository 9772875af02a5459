"""Training: the orchestration of `adapt run`, the loop, evaluation, batching, the optimizer, precision, the
non-finite guard and whether a checkpoint may be resumed."""
