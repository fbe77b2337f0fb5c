"""Durable queues on either side of a turn: the inbox (intake) and the outbox (delivery).

Same discipline as :mod:`evie.state` (adr/0006, adr/0012): the document is built
under a brief lock, serialised and written atomically outside it, off the event loop.
"""
