"""Command-line tools; each module is one `pfcn-*` command."""
