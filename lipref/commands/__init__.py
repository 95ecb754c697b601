"""The `lipref` commands (click), one module per group of commands; cli.py puts them
together. No math lives here: each command parses its options, calls the library and
prints a table (or JSON with --json)."""
