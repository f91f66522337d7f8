"""Responses the proxy writes itself: error pages and redirects, prebuilt as bytes.

Error responses always close the connection: after a framing error the stream
position is unknown, and the rare 404/503 is not worth keeping a half-read
request body around for.
"""

from http import HTTPStatus

_PAGE = (
    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{code} {reason}</title>'
    "<style>body{{font-family:system-ui,sans-serif;margin:4em auto;max-width:36em;color:#333}}"
    "h1{{font-size:1.6em}}</style></head>\n"
    "<body><h1>{code} {reason}</h1><p>{text}</p></body></html>\n"
)

_TEXTS = {
    400: "The request could not be understood.",
    404: "No application is configured for this address.",
    405: "This method is not supported by the proxy.",
    408: "The request took too long to arrive.",
    413: "The request body is too large.",
    414: "The request address is too long.",
    431: "The request headers are too large.",
    500: "The proxy failed to handle the request.",
    501: "The request uses a transfer coding the proxy does not implement.",
    502: "The application is not responding.",
    503: "The application is not available right now.",
    504: "The application took too long to respond.",
}


def page_body(code: int, text: str | None = None) -> bytes:
    """The built-in page for `code`, with `text` (HTML the caller escaped: a stop message) as its sentence."""
    text = _TEXTS.get(code, "") if text is None else text
    return _PAGE.format(code=code, reason=HTTPStatus(code).phrase, text=text).encode()


def _build(code: int, head_only: bool = False) -> bytes:
    reason = HTTPStatus(code).phrase
    body = page_body(code)
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


_ERRORS = {code: _build(code) for code in _TEXTS}
_ERROR_HEADS = {code: _build(code, head_only=True) for code in _TEXTS}


def error_response(code: int, head_only: bool = False) -> bytes:
    """The full HTTP/1.1 error response for `code` (head only for HEAD requests)."""
    table = _ERROR_HEADS if head_only else _ERRORS
    response = table.get(code)
    return response if response is not None else _build(code, head_only)


def redirect_response(location: bytes) -> bytes:
    """A 301 to `location` (HTTP to HTTPS, canonical host); the connection closes as in kamal-proxy."""
    body = b'<a href="%s">Moved Permanently</a>.\n' % location.replace(b'"', b"%22")
    return (
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: %s\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (location, len(body), body)
    )


def text_response(body: bytes) -> bytes:
    """A 200 with a plain-text body (ACME challenge answers)."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )


def page_response(
    code: int, page: bytes, head_only: bool = False, content_type: bytes = b"text/html"
) -> bytes:
    """An error response with an operator's own HTML page (pythrust's BAD_GATEWAY_PAGE, a service's
    --error-pages); its encoding is only named when it is known."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        code,
        HTTPStatus(code).phrase.encode(),
        content_type,
        len(page),
    )
    head += b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    return head if head_only else head + page
