"""Test helpers, from the public lipref.testing: build data on the host, compare on the host,
insist on the backend's type."""
from lipref.testing import assert_backend_close, assert_close, to_numpy  # noqa: F401
