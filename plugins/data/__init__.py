"""Built-in data sources and preprocessors."""
