"""ZeroMQ streaming: publish results (``zmq://`` sink), subscribe to them, and a request/reply
segmentation server with its client. The wire format is docs/wire-format.md (``rtseg/1``)."""

from ..errors import ProtocolError, StreamTimeout
from .client import Client, Reply
from .curve import generate_keys
from .protocol import PROTOCOL, ErrorCode, FrameHeader, PartSpec, ServerError, WireError
from .publisher import Publisher, PublisherSink, PublishOptions, open_publisher_sink
from .server import Server, ServerLimits, ServerStats
from .subscriber import Message, Subscriber, SubscriberOptions, SubscriberStats

__all__ = [
    "PROTOCOL",
    "Client",
    "ErrorCode",
    "FrameHeader",
    "Message",
    "PartSpec",
    "ProtocolError",
    "PublishOptions",
    "Publisher",
    "PublisherSink",
    "Reply",
    "Server",
    "ServerError",
    "ServerLimits",
    "ServerStats",
    "StreamTimeout",
    "Subscriber",
    "SubscriberOptions",
    "SubscriberStats",
    "WireError",
    "generate_keys",
    "open_publisher_sink",
]
