"""busgate: python clients of the busgated gateway (doc/PROTOCOL.md).

CallbackClient mirrors the upstream jetblack-messagebus client's API over
asyncio; connect() gives a blocking client for scripts. The upstream
package's names are here too (authenticators, handler types) except
its Client, the abstract class apps subclass: busgate.Client is the
blocking client (subclass-style apps use CallbackClient's handlers)."""

from .authentication import BasicAuthenticator, NullAuthenticator, TokenAuthenticator
from .blocking import Client, connect
from .client import AuthorizationHandler, CallbackClient, DataHandler, NotificationHandler
from .protocol import (AuthRequest, BusgateError, BusState, Data, DataPacket, Error,
                       Link, Notification, Revoked)

__version__ = "0.1.0"
__all__ = ["CallbackClient", "Client", "connect", "DataPacket", "BusgateError",
           "Data", "Notification", "AuthRequest", "BusState", "Link", "Error", "Revoked",
           # upstream's names, for apps that import them
           "NullAuthenticator", "BasicAuthenticator", "TokenAuthenticator",
           "DataHandler", "NotificationHandler", "AuthorizationHandler"]
