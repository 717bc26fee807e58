X25519_G: bytearray
X25519_ORDER_SIZE: int

def x25519(k: bytearray, u: bytearray) -> bytearray: ...
