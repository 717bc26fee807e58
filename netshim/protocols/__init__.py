"""Sans-I/O protocol cores: bytes in, values or events out, bytes back, never a socket."""
