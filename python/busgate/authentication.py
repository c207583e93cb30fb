"""The upstream client's authenticators, accepted so that an app's code
runs unchanged; busgated holds the bus credentials, so they are unused."""


class NullAuthenticator:
    def __init__(self) -> None:
        pass


class BasicAuthenticator:
    def __init__(self, username: str, password: str) -> None:
        self.username = username


class TokenAuthenticator:
    def __init__(self, token: str) -> None:
        pass
