class CipherSuite:
    ietfNames: dict[int, str]
