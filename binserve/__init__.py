"""binserve: a pure-Python WSGI server speaking the uwsgi protocol to nginx."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("binserve")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
