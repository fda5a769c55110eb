"""pyhello: the sample Python service of the release lane."""

__version__ = "0.1.0"
