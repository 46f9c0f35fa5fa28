"""The `skillroute` commands' `--url` side: talking to a running service over HTTP.

What goes wrong here is a `CliFailure`, which the command group (cli_failures.Commands) prints
as one line with its exit code: a server that cannot be reached, or is not skillroute, is a user's
mistake, not a bug to show a traceback for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from orchestrator.cli_failures import CliFailure

if TYPE_CHECKING:
    import httpx

POLL_S = 2.0  # 30 polls a minute: twice a second ran a key with a lower per-minute limit into 429s
RETRY_AFTER_CAP_S = 60.0  # a per-minute limit frees a request within a minute; a longer ask is not waited out
LIMITED_TRIES = 3  # 429s in a row, each waited out, before following gives up (the change stays accepted)
pause: Callable[[float], None] = time.sleep  # a module attribute, so tests record the waits instead of waiting


@contextmanager
def client(url: str, key: str | None) -> Iterator[httpx.Client]:
    """A client on the service at `url`, sending `key` as the bearer token. A transport failure
    (refused, timed out, not HTTP), a reply not readable as HTTP, or JSON that is not what
    skillroute answers (another JSON service on that port) fails with exit 1; a malformed `url`
    (no http:// or https://, no host, no port a socket has) or `key` with exit 2."""
    import httpx

    # a header is printable ASCII: httpx raised on a CR (a key read from a CRLF file), which read as
    # "cannot reach", exit 1; the key is not echoed, it is a secret
    if key is not None and not (key.isascii() and key.isprintable()):
        raise CliFailure("--key: an API key is printable ASCII, no control characters (a key read from a file "
                         "may end in a \\r: strip it); skillroute's are sk-sr-…", 2)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(base_url=_checked(url), timeout=120, headers=headers) as http:
            yield http
    except httpx.InvalidURL as exc:  # not an HTTPError: a malformed --url is the user's argument
        raise CliFailure(f"--url {url!r} is not a URL: {exc}", 2) from exc
    except httpx.HTTPError as exc:
        raise CliFailure(f"cannot reach {url}: {exc}", 1) from exc
    # JSON, but not the shape skillroute's replies have (ValueError: an id or accuracy that is no number)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
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
    was not what went wrong; a redirect, or a reply that is not JSON (another server on that port, a
    proxy's error page), with exit 1 naming where it points or showing its start."""
    if r.status_code >= 500:
        raise CliFailure(f"server error ({r.status_code}) at {r.request.url}: {_refusal(r)}", 1)
    if r.status_code >= 400:
        raise CliFailure(f"refused ({r.status_code}): {_refusal(r)}", 2)
    if r.status_code >= 300:  # not followed: skillroute never redirects, so this is another server
        raise CliFailure(f"{r.request.url} did not answer as skillroute does: a redirect ({r.status_code}) to "
                         f"{r.headers.get('location', 'no Location')}", 1)
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


def follow(http: httpx.Client, e: dict[str, Any], report: Callable[[int, int], None], was: str) -> dict[str, Any]:
    """`e`, a profiling expert, once it has left `profiling`, its progress reported meanwhile. The
    change was accepted already: a failure now (429s past LIMITED_TRIES, a lost server) exits 1
    saying the expert was `was` ("registered", "changed"), not 2 as if the command were refused."""
    with _accepted_already(e, was, "following its profiling"):
        return _followed(http, e, report)


def read_back(http: httpx.Client, e: dict[str, Any], was: str) -> dict[str, Any]:
    """`e` with its profile (PATCH and DELETE reply without one; GET /v1/experts/{id} has it),
    read as `follow` polls: the change is accepted already."""
    if e.get("profile") is not None:
        return e
    with _accepted_already(e, was, "reading it back"):
        return dict(_polled(http, f"/v1/experts/{e['id']}"))


@contextmanager
def _accepted_already(e: dict[str, Any], was: str, doing: str) -> Iterator[None]:
    """A failure after the server accepted the change: exit 1, naming the expert it stands for."""
    try:
        yield
    except CliFailure as exc:
        raise CliFailure(f"expert {e['name']!r} (id {e['id']}) was {was} on the server; {doing} stopped: "
                         f"{exc.message}", 1) from exc


def _followed(http: httpx.Client, e: dict[str, Any], report: Callable[[int, int], None]) -> dict[str, Any]:
    """Poll every POLL_S until `e` leaves `profiling`; the progress it ended at is reported last,
    so the bar ends where in-process it does (it stayed at the last poll still profiling)."""
    while e["status"] == "profiling":
        report(*_progress(e))
        pause(POLL_S)  # polling a remote server's progress, not waiting for readiness
        e = _polled(http, f"/v1/experts/{e['id']}")
    report(*_progress(e))
    return e


def _progress(e: dict[str, Any]) -> tuple[int, int]:
    """(done, total) for the bar: all of it once ready; a total of 0 (not known yet) shown as 1."""
    total = e["progress"]["total"] or 1
    return (total if e["status"] == "ready" else e["progress"]["done"]), total


def _polled(http: httpx.Client, path: str) -> Any:
    """`accepted(GET path)`, each 429 waited out (its Retry-After) up to LIMITED_TRIES times."""
    r = _get(http, path)
    for _ in range(LIMITED_TRIES):
        if r.status_code != 429:
            break
        pause(_retry_after(r))
        r = _get(http, path)
    return accepted(r)


def _get(http: httpx.Client, path: str) -> httpx.Response:
    """GET `path`; a transport failure is a CliFailure here, so follow() names the accepted expert."""
    import httpx

    try:
        return http.get(path, timeout=30)
    except httpx.HTTPError as exc:
        raise CliFailure(f"cannot reach {http.base_url}: {exc}", 1) from exc


def _retry_after(r: httpx.Response) -> float:
    """The seconds a 429 asks to wait, at most RETRY_AFTER_CAP_S; POLL_S where it names none
    readable (absent, an HTTP date, not a number)."""
    try:
        wait = float(r.headers.get("Retry-After", POLL_S))
    except ValueError:
        wait = POLL_S
    return min(wait, RETRY_AFTER_CAP_S) if wait >= 0 else POLL_S  # NaN is not >= 0
