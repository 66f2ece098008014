"""Identity and trust for Curbside: signing keys, typed signed tokens and badges.

This package imports nothing else from Curbside; the agent (``edge``) and the
issuer tooling both build on it.
"""
