import ssl
from busgate import CallbackClient

...

async def main():
    """Start the demo"""
    ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = await CallbackClient.create()
    await client.add_subscription('TEST', 'FOO')
    await client.start()
