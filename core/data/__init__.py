"""The data stage: preparing, splitting and tokenizing a corpus, with its caches."""
