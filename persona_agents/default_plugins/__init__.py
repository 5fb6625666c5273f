"""Built-in plugins: shipped through the same hooks as any installed plugin."""
