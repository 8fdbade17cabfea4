"""Example networks bundled with lipbound (used by ``lipbound demo``)."""
