"""The service's configuration: YAML, parsed with libyaml when it loads."""

import yaml

try:
    # The C loader needs yaml's _yaml extension and libyaml-0.so.2.
    from yaml import CSafeLoader as Loader
except ImportError:
    from yaml import SafeLoader as Loader

DEFAULT = """
greeting: hello
started: 2024-01-02T03:04:05Z
"""


def load(text=DEFAULT):
    return yaml.load(text, Loader=Loader)


def loader_name():
    return Loader.__name__
