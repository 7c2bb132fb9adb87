"""Tools an env can execute (registry, sandbox and built-in tools come with the tool library)."""
