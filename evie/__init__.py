"""evie: talk to your pi coding agent from Telegram, Discord and the terminal."""

__version__ = "0.1.0"
