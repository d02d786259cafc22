"""dbguardctl: one module per subcommand. Each module's docstring opens with one summary
line per command it serves, which `dbguardctl --help` reads from the source without
importing the module, so the docs cannot drift from the code."""
