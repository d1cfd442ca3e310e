"""One torch thread for these tests (see tests.helpers.one_torch_thread)."""

from tests.helpers import one_torch_thread  # noqa: F401
