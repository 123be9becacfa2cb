"""The `pod-identity-injector` command: the parser, the settings it builds, and one module
per command. The only layer that prints to the terminal or chooses an exit code."""
