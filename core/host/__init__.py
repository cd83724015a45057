"""The plugin host: hook specifications, plugin loading and the component registry."""
