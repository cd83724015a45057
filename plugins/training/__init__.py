"""The built-in `standard` trainer and what it writes as it runs."""
