"""From an HTTP request to image bytes, and from a bad image to the right 4xx.

A predict request carries its images in one of three ways:

* ``multipart/form-data``: one or more file parts (any field name; the page and curl ``-F file=@x.png``
  use ``file``), optionally a ``topk`` field;
* ``application/json``: ``{"image": BASE64}`` or ``{"images": [BASE64, ...]}`` (a ``data:`` URL
  prefix is allowed), optionally ``"topk"``;
* the raw image as the body (``Content-Type: image/*`` or ``application/octet-stream``; curl's
  ``--data-binary`` default ``application/x-www-form-urlencoded`` is taken as raw bytes as well).

The body is read with a byte counter, so an upload over the limit is refused (413) after at most
the limit has been read, whatever Content-Length claims; nothing is parsed before that.

Bodies being received at once share one budget (``InflightBytes``, ``--max-inflight-mb``): a request
reserves its Content-Length before a byte is read (a chunked body: each chunk as it arrives) and
holds it until its answer is ready; when the budget is full it is answered 503 with Retry-After at
once.  The whole body must arrive within ``--body-timeout`` seconds (else 408, and the connection is
closed); a client that goes away mid-body raises Starlette's ``ClientDisconnect`` (counted as 499).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..data import BadImageError


class ClientError(Exception):
    """A 4xx answer: ``{"detail": message, **extra}`` with ``status`` (and optional headers)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


HOW_TO_SEND = ("send the image as multipart/form-data (curl -F file=@photo.png), as JSON "
               '{"image": "<base64>"}, or as the raw body with Content-Type: image/png')

RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded", "")


def _mb(n: int) -> str:
    return f"{n / 2**20:.4g} MB ({n} bytes)"


class InflightBytes:
    """The bytes of request bodies the server holds at once, and their limit (``None``: no limit).

    Everything runs on the event loop, so plain integers need no lock.  ``reserve()`` gives a
    ``Reservation`` to use as a context manager: whatever it took is given back on leaving, whatever
    the way out (an answer, a 4xx, a disconnect, a cancelled task)."""

    def __init__(self, limit: int | None):
        self.limit, self.used = limit, 0

    def reserve(self) -> Reservation:
        return Reservation(self)


class Reservation:
    """One request's share of an ``InflightBytes`` budget (see ``grow_to``)."""

    def __init__(self, budget: InflightBytes):
        self.budget, self.held = budget, 0

    def grow_to(self, n: int) -> None:
        """Hold ``n`` bytes in all (never less than already held); 503 with Retry-After if they do
        not fit next to what the other requests hold."""
        more = n - self.held
        if more <= 0:
            return
        b = self.budget
        if b.limit is not None and b.used + more > b.limit:
            raise ClientError(
                503, f"the server is full with other uploads: {_mb(b.used)} of its {_mb(b.limit)} limit for "
                     f"request bodies in flight is taken and this request needs {_mb(n)}; retry after the "
                     "Retry-After seconds, or send smaller or fewer images at a time (the server sets the "
                     "limit with --max-inflight-mb)", headers={"Retry-After": "1"}, limit=b.limit)
        b.used += more
        self.held = n

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


async def read_body(request: Request, limit: int, held: Reservation | None = None,
                    timeout: float | None = None) -> bytes:
    """The whole body, refusing (413) anything over ``limit`` bytes before reading more.

    ``held``: the request's share of the in-flight budget; its Content-Length is reserved before
    anything is read, a chunked body's bytes as they come (503 once the budget is full).
    ``timeout``: seconds the whole body may take to arrive (408, and the connection is closed).
    A client that disconnects mid-body raises ``ClientDisconnect``."""
    declared = request.headers.get("content-length")
    declared = int(declared) if declared and declared.isdigit() else None
    if declared is not None and declared > limit:
        raise ClientError(413, f"upload of {_mb(declared)} is over the limit of {_mb(limit)}; "
                               "send a smaller image (the server sets the limit with --max-upload-mb)", limit=limit)
    if held is not None and declared:
        held.grow_to(declared)  # refused before a byte of the body is read
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # chunked uploads, or a Content-Length that lied
                    raise ClientError(413, f"upload is over the limit of {_mb(limit)}; send a smaller image "
                                           "(the server sets the limit with --max-upload-mb)", limit=limit)
                if held is not None:
                    held.grow_to(size)  # a no-op while within the declared length
                chunks.append(chunk)
    except TimeoutError:
        raise ClientError(408, f"the request body did not arrive within {timeout:g} s ({_mb(size)} received); "
                               "send it faster or in smaller requests (the server sets the time with "
                               "--body-timeout)", headers={"Connection": "close"}) from None
    return b"".join(chunks)


async def read_images(request: Request, limit: int, max_images: int, held: Reservation | None = None,
                      timeout: float | None = None) -> tuple[list[tuple[str, bytes]], dict]:
    """-> ([(name, image bytes), ...], options such as ``{"topk": "3"}``); ``ClientError`` otherwise.
    ``held`` and ``timeout``: see ``read_body``."""
    body = await read_body(request, limit, held, timeout)
    if not body:
        raise ClientError(400, f"empty request body: {HOW_TO_SEND}")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        images, options = _from_multipart(request.headers["content-type"], body, max_images)
    elif ctype == "application/json" or ctype.endswith("+json"):
        images, options = _from_json(body, max_images)
    elif ctype.startswith("image/") or ctype in RAW_TYPES:
        images, options = [("body", body)], {}
    else:
        raise ClientError(415, f"unsupported Content-Type {ctype!r}: {HOW_TO_SEND}")
    if not images:
        raise ClientError(400, f"no image in the request: {HOW_TO_SEND}")
    return images, options


def _from_multipart(content_type: str, body: bytes, max_images: int):
    """Parse a multipart body that is already in memory: file parts -> images, others -> options.

    python-multipart's parser is fed the bytes directly; Starlette's form parser would copy each
    file into a temporary file first (measured: 0.1 ms a request, 15% of a small request's time)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ClientError(400, "multipart/form-data without a boundary in its Content-Type")
    parts: list[dict] = []
    cur: dict = {}
    field = value = b""

    def on_part_begin():
        nonlocal cur
        cur = {"headers": {}, "data": []}

    def on_header_field(data, start, end):
        nonlocal field
        field += data[start:end]

    def on_header_value(data, start, end):
        nonlocal value
        value += data[start:end]

    def on_header_end():
        nonlocal field, value
        cur["headers"][field.lower()] = value
        field = value = b""

    def on_part_data(data, start, end):
        cur["data"].append(data[start:end])

    def on_part_end():
        parts.append(cur)
        if sum("filename" in _disposition(p) for p in parts) > max_images:
            raise ClientError(413, f"more than {max_images} images in one request; the limit is {max_images}",
                              limit=max_images)

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise ClientError(400, f"malformed multipart/form-data body: {e}") from None
    images, options = [], {}
    for part in parts:
        disp = _disposition(part)
        name = disp.get("name", "")
        data = b"".join(part["data"])
        if "filename" in disp:  # a file part (an empty filename is still a file field)
            images.append((disp["filename"] or name or f"file {len(images)}", data))
        else:
            options[name] = data.decode("utf-8", "replace")
    return images, options


def _disposition(part: dict) -> dict[str, str]:
    """``Content-Disposition: form-data; name="file"; filename="x.png"`` -> {"name": ..., "filename": ...}."""
    _, params = parse_options_header(part["headers"].get(b"content-disposition", b"").decode("latin-1"))
    return {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}


def _from_json(body: bytes, max_images: int):
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:  # e.g. 200k nested arrays: the parser's stack, not a server fault
        raise ClientError(400, "request body is JSON nested too deeply") from None
    if not isinstance(doc, dict) or not ({"image", "images"} & doc.keys()):
        raise ClientError(400, 'JSON body must be an object with "image": BASE64 or "images": [BASE64, ...]')
    items = doc["images"] if "images" in doc else [doc["image"]]
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ClientError(400, '"images" must be a list of base64 strings ("image": one string)')
    if len(items) > max_images:
        raise ClientError(413, f"{len(items)} images in one request; the limit is {max_images}", limit=max_images)
    images = []
    for i, text in enumerate(items):
        if text.startswith("data:"):  # data:image/png;base64,....
            text = text.partition(",")[2]
        try:
            images.append((f"image {i}", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise ClientError(400, f"image {i} is not valid base64") from None
    options = {k: doc[k] for k in ("topk",) if k in doc}
    return images, options


def status_for(err: BadImageError) -> int:
    """The HTTP status for an image that does not decode: too many pixels 413, not an image 415,
    anything else (empty, truncated, corrupt) 400."""
    reason = err.reason
    if reason.startswith("decompression bomb"):
        return 413
    if reason.startswith("not an image"):
        return 415
    return 400


def parse_topk(value, default: int, n_classes: int) -> int:
    """``topk`` from a query, form field or JSON: an integer >= 1, capped at the number of classes."""
    if value is None:
        return min(default, n_classes)
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."  # never echo a huge value back
    # JSON true is not 1 and 2.9 is not 2: only an integer (or a string of one) is a count
    if isinstance(value, bool) or not isinstance(value, (int, str)) \
            or (isinstance(value, str) and not value.strip().lstrip("+-").isdigit()):
        raise ClientError(400, f"topk must be an integer >= 1, got {shown}")
    k = int(value)
    if k < 1:
        raise ClientError(400, f"topk must be an integer >= 1, got {shown}")
    return min(k, n_classes)
