"""Getting things from disk or the hub: models and tokenizers cache-first, local data files, the recipe's splits."""
