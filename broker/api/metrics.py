"""``GET /metrics``: the broker's Prometheus metrics (names ``access_*``, docs/broker.md).

No authentication, as Prometheus scrapes: the metrics name no person, grant or secret. An
operator who would rather not serve them on the public port sets ``metrics_listen``: they are
then served only there (``server.run``), and this route answers 404.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from access.broker.api.deps import BrokerDep
from access.broker.errors import NotFound
from access.broker.observe.metrics import CONTENT_TYPE, metrics_for

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(broker: BrokerDep) -> Response:
    """The text exposition format (a sync route: the database gauges are read in a worker thread).

    Raises:
        NotFound: the metrics are served on ``metrics_listen`` instead.
    """
    if broker.settings.metrics_listen is not None:
        raise NotFound("no such endpoint")
    return Response(metrics_for(broker).exposition(), media_type=CONTENT_TYPE)
