"""One exception family for every user-facing failure.

Surfaces map these to a one-line message: the CLI to exit code 2, the HTTP server to the
``http_status`` of the class with a JSON body. Anything that is not an ``Ip2pError`` is a bug.
"""


class Ip2pError(Exception):
    """Base class: the message is one line a user can act on.

    ``param`` names the option at fault as the user spelled it (a CLI flag, a request field, a UI
    label), when one is; the server returns it as OpenAI's ``param``.
    """

    http_status = 400

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param


class BadOptions(Ip2pError):
    """An option is out of range or of the wrong type."""

    http_status = 422


class BadImage(Ip2pError):
    """An input image is missing, unreadable, truncated or too large."""

    http_status = 400


class ImageTooLarge(BadImage):
    """An input image exceeds the pixel or byte limit."""

    http_status = 413


class ModelNotFound(Ip2pError):
    """A model reference resolves to nothing on this machine (and cannot be fetched)."""

    http_status = 404


class BadModel(Ip2pError):
    """A model was found but is not an InstructPix2Pix model (wrong architecture, corrupt, unsafe)."""

    http_status = 422


class BadData(Ip2pError):
    """A data set or manifest cannot be used."""


class OutOfMemory(Ip2pError):
    """The device ran out of memory; the message suggests a lower resolution or --low-memory."""

    http_status = 503


class Cancelled(Ip2pError):
    """The caller cancelled the edit through its callback."""

    http_status = 499


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (its type name when the message is empty), cut
    to ``limit`` characters: what a one-line error message quotes of a library's exception."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__[:limit]
