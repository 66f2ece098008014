"""The Curbside agent: configuration, access, lockers, outbox, link and CLI."""

__version__ = "0.1.0"
