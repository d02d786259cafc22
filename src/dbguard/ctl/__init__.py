"""dbguardctl: one module per subcommand; each opens with a summary line that the help
output reads, so the docs cannot drift from the code."""
