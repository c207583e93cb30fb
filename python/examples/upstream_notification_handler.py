# The upstream README's notification handler snippet, run in a client.
import asyncio
from uuid import UUID

from busgate import CallbackClient


async def main():
    client = await CallbackClient.create()

    # A notification handler.
    async def on_notification(
            client_id: UUID,
            user: str,
            host: str,
            feed: str,
            topic: str,
            is_add: bool
    ) -> None:
        """Called for a notification"""
        pass

    # Add the handler to the client.
    client.notification_handlers.append(on_notification)
    # Remove the handler
    client.notification_handlers.remove(on_notification)

    await client.stop()

asyncio.run(main())
