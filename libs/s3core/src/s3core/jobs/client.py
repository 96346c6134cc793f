"""The controller's client: :class:`s3core.rpc.clients.ControllerClient` (the wire layer), under the name the
CLI, registered workers and tests have always imported."""

from s3core.rpc.clients import CONTROLLER_HTTP_PORT as DEFAULT_HTTP_PORT
from s3core.rpc.clients import CONTROLLER_PORT as DEFAULT_PORT
from s3core.rpc.clients import CONTROLLER_SERVICE as SERVICE_NAME
from s3core.rpc.clients import ControllerClient, Unauthenticated

__all__ = ["DEFAULT_HTTP_PORT", "DEFAULT_PORT", "SERVICE_NAME", "ControllerClient", "Unauthenticated"]
