"""The built-in lmforge plugins, registered through the same hooks as any installed plugin."""
