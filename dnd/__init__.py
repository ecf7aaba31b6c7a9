"""dnd: Describe-and-Dissect — plain-language descriptions of what a vision network's neurons respond to."""

__version__ = "0.1.0"
