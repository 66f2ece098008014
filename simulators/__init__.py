"""The far side of every Curbside interface, for developers and tests.

A Mosquitto broker on loopback, a badge reader on a pty, a GPIO world with door physics
on gpiozero MockFactory pins, a platform that records what the site publishes, and the
``curbside demo`` scene that plays them together. Nothing in ``edge`` imports this package.
"""
