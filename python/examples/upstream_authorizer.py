# An authorizer as the upstream client's README writes one: the
# authorization handler, answering with authorize(). Only the import and
# the create(...) line differ from upstream; no per-feed registration.
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
        print(f'authorization: client_id={client_id},host="{host}",user="{user}",'
              f'feed="{feed}",topic="{topic}"', flush=True)
        await client.authorize(client_id, feed, topic, True, {1, 2})

    # Add the handler to the client.
    client._authorization_handlers.append(on_authorization)
    await client.start()

if __name__ == '__main__':
    asyncio.run(main())
