"""The `xpeft` command line. Modules here parse options and print; the work is in the core."""
