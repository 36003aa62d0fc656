# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""The few Image API v2 calls the multi-store commands make, as raw JSON.

Requests go through a keystoneauth1 session, the one python-openstackclient
or ``glance-imgplugins`` built from ``clouds.yaml`` / ``--os-*`` / ``OS_*``:
authentication, TLS and token renewal are keystoneauth's.  Error answers are
parsed here and not by python-glanceclient, whose error handling itself
raises ``AttributeError`` on a JSON body such as ``{"error": "boom"}``.
Every failure becomes a :mod:`glance_imgplugins.exception` error whose text
names the action, the HTTP status and the server's own words, never a
Python repr.
"""

from __future__ import annotations

import datetime
import email.utils
import html.parser
import http
import json
import re
import uuid
from typing import Any, BinaryIO, Callable, Iterable, Sequence

from glance_imgplugins import exception

#: Answers worth polling again: the API is restarting or behind a proxy.
TRANSIENT_STATUSES = frozenset({502, 503, 504})
_MAX_REASON = 300
_CHUNK = 64 * 1024


class _Text(html.parser.HTMLParser):
    """The visible text of an HTML error page (webob's, a proxy's)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ('script', 'style', 'title'):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ('script', 'style', 'title') and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def _json_messages(value: Any) -> list[str]:
    """Human messages from any JSON error body shape."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [m for item in value for m in _json_messages(item)]
    if not isinstance(value, dict):
        return [] if value is None else [str(value)]
    for key in ('message', 'detail', 'details', 'faultstring', 'title',
                'error_description'):
        if key in value:
            found = _json_messages(value[key])
            if found:
                return found
    # {"error": "boom"}, {"badRequest": {...}}, {"error": {...}}.
    return [m for item in value.values() for m in _json_messages(item)]


def error_reason(body: bytes | str | None, content_type: str = '') -> str:
    """What the server said in an error answer, in one short line."""
    if body is None:
        return ''
    text = body.decode('utf-8', 'replace') if isinstance(body, bytes) \
        else body
    text = text.strip()
    reason = ''
    if 'json' in content_type or text[:1] in ('{', '['):
        try:
            reason = ' '.join(dict.fromkeys(_json_messages(json.loads(text))))
        except ValueError:
            reason = ''
    if not reason and '<' in text:
        parser = _Text()
        try:
            parser.feed(text)
            parser.close()
            reason = ' '.join(parser.parts)
        except Exception:  # a broken page: fall back to the raw text
            reason = ''
    if not reason:
        reason = text
    reason = ' '.join(reason.split())
    # webob pages repeat the status line first: "404 Not Found No image..."
    match = re.match(r'^(\d{3}) ', reason)
    if match:
        try:
            phrase = http.HTTPStatus(int(match.group(1))).phrase
        except ValueError:
            phrase = ''
        line = '%s %s' % (match.group(1), phrase)
        if phrase and reason.startswith(line) and reason != line:
            reason = reason[len(line):].strip()
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON - 3].rstrip() + '...'
    return reason


def connection_reason(err: BaseException) -> str:
    """A connection failure in words: the URL and the OS's reason, without
    the reprs urllib3 puts in its messages."""
    causes: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and len(causes) < 12:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            why = cause.strerror
            break
        if isinstance(cause, TimeoutError) or 'timed out' in str(cause):
            why = 'timed out'
            break
    else:
        why = ''
    text = str(err)
    # keystoneauth: "Unable to establish connection to URL: <urllib3 repr>"
    match = re.search(r'(https?://[^\s:]+(?::\d+)?[^\s:]*)', text)
    where = match.group(1) if match else ''
    if not why:
        for hint in ('Connection refused', 'Name or service not known',
                     'timed out', 'Connection reset', 'Remote end closed',
                     'certificate verify failed', 'No route to host'):
            if hint.lower() in text.lower():
                why = hint
                break
    if not why:
        why = 'connection failed'
    return '%s (%s)' % (where, why) if where else why


def translate(err: Exception, action: str) -> exception.MultistoreError:
    """A keystoneauth (or requests) failure as one of our errors.

    ``action`` 'authenticate' means the request was Keystone's.
    """
    from keystoneauth1 import exceptions as ksa_exc

    if isinstance(err, exception.MultistoreError):
        return err
    keystone = action == 'authenticate'
    if isinstance(err, (ksa_exc.ConnectionError, OSError)) or (
            isinstance(err, ksa_exc.ClientException)
            and 'Unable to establish connection' in str(err)):
        if keystone:
            return exception.AuthenticationError(
                reason='cannot reach the identity service: %s'
                       % connection_reason(err))
        return exception.ApiConnectionError(reason=connection_reason(err))
    if isinstance(err, ksa_exc.HttpError):
        # Raised by the auth plugin itself: Keystone refused or failed.
        response = getattr(err, 'response', None)
        reason = (error_reason(response.content) if response is not None
                  else '') or err.message or ''
        return exception.AuthenticationError(reason='HTTP %s: %s' % (
            err.http_status, _strip_request_id(reason)))
    if isinstance(err, ksa_exc.ClientException):
        text = _strip_request_id(str(err)).split(' HTTPConnectionPool(')[0]
        return exception.AuthenticationError(reason=text)
    return exception.ApiConnectionError(
        reason='%s failed unexpectedly (run with --debug for details)'
               % action)


def _strip_request_id(text: str) -> str:
    return re.sub(r'\s*\(Request-ID: [^)]*\)', '', text).strip()


def image_endpoint(url: str) -> str:
    """The unversioned Image API root ('…/v2' catalog entries too)."""
    url = url.rstrip('/')
    return url[:-3] if url.endswith('/v2') else url


class CountingReader:
    """The file glanceclient-like staging reads, reporting bytes read."""

    def __init__(self, f: BinaryIO, size: int,
                 report: Callable[[int], None]) -> None:
        self._f = f
        self._size = size
        self._report = report
        self.sent = 0

    def __len__(self) -> int:
        # requests sends a Content-Length instead of chunked encoding.
        return self._size

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size if size and size > 0 else _CHUNK)
        self.sent += len(chunk)
        self._report(self.sent)
        return chunk


class Api:
    """Image API v2 over a keystoneauth1 session.

    ``session`` is a ``keystoneauth1.session.Session`` (anything with its
    ``request(url, method, **kwargs)``), ``endpoint`` the Image API URL
    from the catalog or an ``image_endpoint_override``.
    """

    def __init__(self, session: Any, endpoint: str,
                 timeout: float = 60) -> None:
        self.session = session
        self.endpoint = image_endpoint(endpoint)
        self.timeout = timeout
        #: The server's clock at its last answer (its Date header).
        self.server_now: datetime.datetime | None = None

    def request(self, method: str, path: str, action: str,
                ok: Iterable[int] = (200, 201, 202, 204),
                **kwargs: Any) -> Any:
        kwargs.setdefault('timeout', self.timeout)
        try:
            resp = self.session.request(self.endpoint + path, method,
                                        raise_exc=False, **kwargs)
        except Exception as err:
            raise translate(err, action) from err
        date = resp.headers.get('Date')
        if date:
            try:
                self.server_now = email.utils.parsedate_to_datetime(date)
            except (TypeError, ValueError):
                pass
        if resp.status_code not in tuple(ok):
            reason = error_reason(resp.content,
                                  resp.headers.get('Content-Type', ''))
            raise exception.ImageApiError(
                action=action, status=resp.status_code,
                reason='HTTP %d%s' % (resp.status_code,
                                      ': ' + reason if reason else ''))
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as err:
            raise exception.ImageApiError(
                action=action, status=resp.status_code,
                reason='the answer is not JSON: %s' % error_reason(
                    resp.content)) from err

    def get(self, path: str, action: str) -> Any:
        return self.request('GET', path, action)

    def image(self, image_id: str) -> dict[str, Any]:
        body = self.get('/v2/images/%s' % image_id, 'show image %s'
                        % image_id)
        if not isinstance(body, dict) or 'id' not in body:
            raise exception.ImageApiError(
                action='show image %s' % image_id, reason='unexpected answer')
        return body

    def find_image(self, name_or_id: str) -> dict[str, Any]:
        """The image with this ID, else the only one with this name."""
        try:
            uuid.UUID(name_or_id)
        except ValueError:
            pass
        else:
            try:
                return self.image(name_or_id)
            except exception.ImageApiError as err:
                if err.http_status != 404:
                    raise
        body = self.request('GET', '/v2/images', 'find image %s'
                            % name_or_id, params={'name': name_or_id})
        found = list((body or {}).get('images') or [])
        if not found:
            raise exception.ImageNotFound(image=name_or_id)
        if len(found) > 1:
            raise exception.AmbiguousImage(image=name_or_id,
                                           count=len(found))
        return dict(found[0])

    def tasks(self, image_id: str) -> list[dict[str, Any]]:
        body = self.get('/v2/images/%s/tasks' % image_id,
                        'list the tasks of image %s' % image_id)
        return list((body or {}).get('tasks') or [])

    def stores(self) -> list[dict[str, Any]]:
        body = self.get('/v2/info/stores', 'list stores')
        return list((body or {}).get('stores') or [])

    def create(self, fields: dict[str, Any]) -> str:
        body = self.request('POST', '/v2/images', 'create the image',
                            json=fields)
        return str(body['id'])

    def stage(self, image_id: str, data: Any) -> None:
        self.request('PUT', '/v2/images/%s/stage' % image_id,
                     'stage the image data', data=data, timeout=None,
                     headers={'Content-Type': 'application/octet-stream'})

    def start_import(self, image_id: str, method: str, *,
                     stores: Sequence[str], allow_failure: bool,
                     uri: str | None = None) -> None:
        body: dict[str, Any] = {'method': {'name': method},
                                'stores': list(stores),
                                'all_stores_must_succeed': not allow_failure}
        if uri is not None:
            body['method']['uri'] = uri
        self.request('POST', '/v2/images/%s/import' % image_id,
                     'start the %s import' % method, json=body)
