"""Getting evie set up and keeping it healthy: ``evie setup``, ``evie doctor``, ``evie service``.

This package sits just under the command line (adr/0008): it may use everything
below it, and talks to the Telegram Bot API and Discord directly over aiohttp for
its few one-off checks, so it needs neither chat library.
"""
