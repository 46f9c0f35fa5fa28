"""The `skillroute` commands' `--url` side: talking to a running service over HTTP.

What goes wrong here is a `CliFailure`, which the command group (cli_failures.Commands) prints
as one line with its exit code: a server that cannot be reached, or is not skillroute, is a user's
mistake, not a bug to show a traceback for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator.cli_failures import CliFailure

if TYPE_CHECKING:
    import httpx


@contextmanager
def client(url: str, key: str | None) -> Iterator[httpx.Client]:
    """A client on the service at `url`, sending `key` as the bearer token. A transport failure
    (refused, timed out, not HTTP), a reply not readable as HTTP, or JSON that is not what
    skillroute answers (another JSON service on that port) fails with exit 1; a malformed `url`
    (no http:// or https://, no host, no port a socket has) or `key` with exit 2."""
    import httpx

    if key is not None and not key.isascii():  # a header is ASCII: httpx raised on building it
        raise CliFailure("--key: an API key is ASCII (skillroute's are sk-sr-…)", 2)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=_checked(url), timeout=120, headers=headers) as http:
            yield http
    except httpx.InvalidURL as exc:  # not an HTTPError: a malformed --url is the user's argument
        raise CliFailure(f"--url {url!r} is not a URL: {exc}", 2) from exc
    except httpx.HTTPError as exc:
        raise CliFailure(f"cannot reach {url}: {exc}", 1) from exc
    except (KeyError, TypeError, AttributeError) as exc:  # JSON, but not the shape skillroute's replies have
        raise CliFailure(f"{url} did not answer as skillroute does ({type(exc).__name__}: {exc})", 1) from exc


def _checked(url: str) -> str:
    """`url` where it names an HTTP server; else exit 2. httpx takes "127.0.0.1:8000" (no scheme),
    "ftp://…", "http://" and port 99999 and fails only on sending, which read as a server that
    could not be reached (exit 1): the mistake is the argument, not the server."""
    import httpx

    parsed = httpx.URL(url)  # InvalidURL (unbalanced brackets, …) is caught by client()
    port_ok = parsed.port is None or 0 < parsed.port < 65536
    if parsed.scheme not in ("http", "https") or not parsed.host or not port_ok:
        raise CliFailure(f"--url {url!r} is not a server's URL: it takes http:// or https://, a host and "
                         "a port under 65536 (e.g. http://127.0.0.1:8000)", 2)
    return url


def accepted(r: httpx.Response) -> Any:
    """The reply's JSON. A refusal (4xx) fails with exit 2 naming its message; the server failing
    (5xx: an error, not ready, a proxy without its upstream) with exit 1, since the user's input
    was not what went wrong; a reply that is not JSON (another server on that port, a proxy's
    error page) with exit 1 showing its start."""
    if r.status_code >= 500:
        raise CliFailure(f"server error ({r.status_code}) at {r.request.url}: {_refusal(r)}", 1)
    if r.status_code >= 400:
        raise CliFailure(f"refused ({r.status_code}): {_refusal(r)}", 2)
    try:
        return r.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise CliFailure(f"{r.request.url} did not answer as skillroute does: {r.text[:200]!r}", 1) from exc


def _refusal(r: httpx.Response) -> str:
    """skillroute's error message, or the start of whatever else the server sent."""
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def remote_id(http: httpx.Client, ref: str) -> int:
    """An expert's id on a running service: the expert named `ref`, else (no expert has that
    name) `ref` read as an id. The name first, as in-process (ExpertService.find): a name may be
    all digits, and reading "1" as id 1 changed or removed another expert than the one named."""
    found = [e["id"] for e in accepted(http.get("/v1/experts")) if e["name"] == ref]
    if found:
        return int(found[0])
    if ref.isascii() and ref.isdigit():  # "²" is a digit to isdigit, not to int; the service bounds the id
        return int(ref)
    raise CliFailure(f"no expert named {ref!r}", 2)
