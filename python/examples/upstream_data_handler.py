# The upstream README's data handler snippet, run in a client.
import asyncio
from typing import List, Optional

from busgate import CallbackClient, DataPacket


async def main():
    client = await CallbackClient.create()

    # A data handler.
    async def on_data(
            user: str,
            host: str,
            feed: str,
            topic: str,
            data_packets: Optional[List[DataPacket]],
            is_image: bool
    ) -> None:
        """Called when data is received"""
        pass

    # Add the handler to the client.
    client.data_handlers.append(on_data)
    # Remove the handler
    client.data_handlers.remove(on_data)

    await client.stop()

asyncio.run(main())
