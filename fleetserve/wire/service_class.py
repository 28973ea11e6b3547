"""How a request names its service class, read the same way by a replica and by the router: the body's
`service_class` ("online" or "offline"), else the x-service-class header, else offline for OpenAI's
`service_tier: "flex"`, else online. Batch jobs always run offline."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetserve.wire.errors import bad_request

ONLINE, OFFLINE = "online", "offline"
SERVICE_CLASSES = (ONLINE, OFFLINE)
SERVICE_CLASS_HEADER = "x-service-class"


def service_class_of(body_class: Any, service_tier: Any, headers: Mapping[str, str]) -> str:
    if body_class is not None:
        if body_class not in SERVICE_CLASSES:
            raise bad_request(f"service_class must be one of {', '.join(SERVICE_CLASSES)}, got {body_class!r}",
                              "service_class")
        return str(body_class)
    header = headers.get(SERVICE_CLASS_HEADER)
    if header is not None:
        value = header.strip().lower()
        if value not in SERVICE_CLASSES:
            raise bad_request(f"the {SERVICE_CLASS_HEADER} header must be one of {', '.join(SERVICE_CLASSES)}, "
                              f"got {header!r}", SERVICE_CLASS_HEADER)
        return value
    return OFFLINE if service_tier == "flex" else ONLINE
