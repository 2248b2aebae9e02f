"""HTTP for the node, one way: every fetch retried with backoff, bounded in size and time, and a
download resumed from its partial copy. Used for the HTTP datasource, SSH keys at a URL, upgrade
bundles and the installer's ISO.

On the bottom floor (imports nothing of the agent); urllib is imported on first use.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Failed(OSError):
    """The last attempt failed: ``attempts`` made, ``last`` the last error."""

    def __init__(self, url: str, attempts: int, last: Exception | None) -> None:
        super().__init__(f"{url}: no answer after {attempts} attempts: {last}")
        self.url, self.attempts, self.last = url, attempts, last


class NotHTTP(Failed):
    """Not an http:// or https:// URL (urllib would also read file:// and ftp://): never tried."""

    def __init__(self, url: str) -> None:
        OSError.__init__(self, f"{url}: not an http:// or https:// URL")
        self.url, self.attempts, self.last = url, 0, self


class TooBig(Exception):
    pass


def _check(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise NotHTTP(url)


def _final(exc: Exception, retry_client_errors: bool) -> bool:
    """An answer that another try will not change: a 4xx (unless the caller waits for the file
    to appear, as a datasource at boot may), other than a timeout or too many requests."""
    import urllib.error
    return (isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429)
            and not retry_client_errors)


def get(url: str, limit: int, attempts: int = 5, delay: float = 2.0, timeout: float = 15.0,
        headers: dict[str, str] | None = None, retry_client_errors: bool = True,
        sleep: Callable[[float], object] = time.sleep) -> bytes:
    """The body at ``url``, at most ``limit`` bytes; ``Failed`` after the last attempt (backoff
    ``delay``, doubling)."""
    import urllib.request
    _check(url)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
                return bytes(resp.read(limit))
        except (OSError, ValueError) as exc:
            last = exc
            if _final(exc, retry_client_errors):
                break
        if attempt + 1 < attempts:
            sleep(delay * 2 ** attempt)
    raise Failed(url, attempt + 1, last)


def download(url: str, dest: str, limit: int, attempts: int = 5, delay: float = 2.0, timeout: float = 30.0,
             progress: Callable[[int, int], None] | None = None,
             on_retry: Callable[[Exception | None, float], None] | None = None,
             sleep: Callable[[float], object] = time.sleep, chunk: int = 1 << 20) -> str:
    """``url`` into the file ``dest``, through ``dest.part``: a partial copy (this try's or an
    earlier one's) is resumed with a range request; a server that ignores the range is read from
    the start. ``progress(got, total)`` after each chunk (total 0 when unknown); ``on_retry(error,
    delay)`` before each wait. More than ``limit`` bytes is an error. ``Failed`` after the last
    attempt, or at once on a 4xx."""
    import urllib.error
    import urllib.request
    _check(url)
    part = dest + ".part"
    last: Exception | None = None
    for attempt in range(attempts):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status != 206:
                    have = 0  # the server ignored the range: start over
                total = have + int(resp.headers.get("Content-Length") or 0)
                if total > limit:
                    raise TooBig(f"{total} bytes is more than the {limit} expected")
                with open(part, "ab" if have else "wb") as out:
                    got = have
                    while data := resp.read(chunk):
                        got += len(data)
                        if got > limit:
                            raise TooBig(f"more than the {limit} bytes expected")
                        out.write(data)
                        if progress:
                            progress(got, total)
                    out.flush()
                    os.fsync(out.fileno())
                if total and got < total:  # the connection closed early: resume from here
                    raise ConnectionError(f"the connection closed after {got} of {total} bytes")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # asked past the end: the partial copy is the whole file
                os.replace(part, dest)
                return dest
            last = exc
            if _final(exc, False):
                break
        except TooBig as exc:  # another try would be too
            last = exc
            if os.path.exists(part):
                os.unlink(part)
            break
        except ValueError as exc:  # not a URL urllib can fetch
            last = exc
            break
        except OSError as exc:
            last = exc
        if attempt + 1 < attempts:
            wait = delay * 2 ** attempt
            if on_retry:
                on_retry(last, wait)
            sleep(wait)
    raise Failed(url, attempt + 1, last)
