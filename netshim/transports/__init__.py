"""Transports under the tunnel stacks: a WebSocket client on any anyio byte stream."""
