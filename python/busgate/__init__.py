"""busgate: python clients of the busgated gateway (doc/PROTOCOL.md).

CallbackClient mirrors the upstream jetblack-messagebus client's API over
asyncio; connect() gives a blocking client for scripts."""

from .blocking import Client, connect
from .client import CallbackClient
from .protocol import (AuthRequest, BusgateError, BusState, Data, DataPacket, Error,
                       Link, Notification, Revoked)

__version__ = "0.1.0"
__all__ = ["CallbackClient", "Client", "connect", "DataPacket", "BusgateError",
           "Data", "Notification", "AuthRequest", "BusState", "Link", "Error", "Revoked"]
