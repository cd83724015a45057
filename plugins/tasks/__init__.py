"""Built-in tasks: language modelling and classification."""
