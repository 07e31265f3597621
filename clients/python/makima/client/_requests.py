"""What the async and the sync client share: building requests and tracking the timeline cursor."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, BinaryIO, TypeVar, overload

from google.protobuf.message import Message

from makima.v1 import daemon_pb2, history_pb2, resources_pb2

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Item = TypeVar("Item", bound=Message)
T = TypeVar("T")


def build_request(request_type: type[Req], request: Req | None, fields: dict[str, Any]) -> Req:
    """A private copy of `request`, or a new one from keyword fields, with a request_id if it takes one.

    The request_id is made here, once per logical call, so that every retry of the call carries the
    same id and the server answers it with the first answer instead of repeating the effect.
    """
    if request is not None and fields:
        raise TypeError("pass either a request message or keyword fields, not both")
    built = request_type(**fields)
    if request is not None:
        built.CopyFrom(request)  # a copy: the caller's message is never changed
    # `Message` declares no fields: request_id is known to exist only once the descriptor says so.
    if "request_id" in built.DESCRIPTOR.fields_by_name and not built.request_id:  # type: ignore[attr-defined]
        built.request_id = str(uuid.uuid4())  # type: ignore[attr-defined]
    return built


@overload
def request_iterator(requests: Iterable[T]) -> Iterator[T]: ...
@overload
def request_iterator(requests: AsyncIterable[T]) -> AsyncIterator[T]: ...
def request_iterator(requests: Iterable[T] | AsyncIterable[T]) -> Iterator[T] | AsyncIterator[T]:
    """A fresh iterator over the requests of a client stream for each attempt of the call (grpc reads
    an iterator; a list or tuple is sent whole again on a retry)."""
    return iter(requests) if isinstance(requests, Iterable) else aiter(requests)


def pack_file(pack: bytes | BinaryIO) -> BinaryIO:
    """The pack of a PushCheckpoint as a seekable file, so that a retry can read it again."""
    return io.BytesIO(pack) if isinstance(pack, bytes) else pack


def push_header(
    header: daemon_pb2.PushCheckpointHeader | None, fields: dict[str, Any], pack: BinaryIO
) -> daemon_pb2.PushCheckpointHeader:
    """The header of a PushCheckpoint: a copy with its request_id (made once per logical call) and
    `pack_size` set to the size of `pack`, which the service checks against the bytes it receives."""
    built = build_request(daemon_pb2.PushCheckpointHeader, header, fields)
    built.pack_size = pack.seek(0, os.SEEK_END)
    return built


def with_page_token(request: Req, token: str) -> Req:
    """A copy of a List/Get request asking for the page after `token`."""
    page = type(request)()
    page.CopyFrom(request)
    page.page_token = token  # type: ignore[attr-defined]  # every List request has it; `Message` declares none
    return page


class TimelineCursor:
    """The last timeline position a follower has seen, from events and keep-alives alike."""

    # Events per stream message asked of the server when the request leaves it unset: a follower back
    # from an old cursor gets its history in a few messages (a server that predates it sends one each).
    EVENTS_PER_MESSAGE = 100

    def __init__(self, request: history_pb2.StreamTimelineRequest) -> None:
        self._request = request
        if not request.max_events_per_message:
            self._request = history_pb2.StreamTimelineRequest()
            self._request.CopyFrom(request)
            self._request.max_events_per_message = self.EVENTS_PER_MESSAGE
        self.cursor = request.after_cursor

    def request(self) -> history_pb2.StreamTimelineRequest:
        """The stream request that resumes right after the last position seen."""
        resumed = history_pb2.StreamTimelineRequest()
        resumed.CopyFrom(self._request)
        resumed.after_cursor = self.cursor
        return resumed

    def take(self, response: history_pb2.StreamTimelineResponse) -> list[resources_pb2.TimelineEvent]:
        """The events of one stream message not handed out yet, in order: none for a keep-alive or the
        end-of-replay marker (whose cursor is taken at once) nor for a replayed event already handed out,
        so that each event is yielded once across reconnects. The caller sets `cursor` to each event's
        as it hands it out."""
        if response.HasField("keep_alive"):
            self.cursor = max(self.cursor, response.keep_alive.cursor)
            return []
        if response.HasField("replay_ended"):
            self.cursor = max(self.cursor, response.replay_ended.cursor)
            return []
        events = response.events.events if response.HasField("events") else [response.event]
        return [event for event in events if event.cursor > self.cursor]
