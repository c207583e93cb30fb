# The upstream README's authorization handler snippet, run in a client.
import asyncio
from uuid import UUID

from busgate import CallbackClient


async def main():
    client = await CallbackClient.create()

    # An authorization handler.
    async def on_authorization(
            client_id: UUID,
            host: str,
            user: str,
            feed: str,
            topic: str
    ) -> None:
        """Called when authorization is requested"""
        pass

    # Add the handler to the client.
    client._authorization_handlers.append(on_authorization)
    # Remove the handler
    client._authorization_handlers.remove(on_authorization)

    await client.stop()

asyncio.run(main())
