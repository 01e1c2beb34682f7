"""`hf-plugins` subcommands: every module here defines `register(subparsers)`."""
