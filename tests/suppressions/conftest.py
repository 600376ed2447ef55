from tests.delivery.conftest import dispatcher

__all__ = ["dispatcher"]
