"""Test-only paste filter standing in for keystonemiddleware.

It turns an ``X-Auth-Token`` of the form ``user:project:role1,role2`` into the
identity headers that Glance's real ``ContextMiddleware`` reads, so tests can
act as different users and roles without a Keystone.
"""

import faulthandler
import os
import signal
import urllib.parse

import webob.dec

# Diagnostics: the harness sends SIGUSR1 to a worker that stopped answering
# and reads every thread's stack from this file (see GlanceServer.stacks()).
_STACKS_DIR = os.environ.get('IMGPLUGINS_STACKS_DIR')
if _STACKS_DIR:
    _stacks_file = open(os.path.join(_STACKS_DIR, 'stacks-%d.txt'
                                     % os.getpid()), 'w')
    faulthandler.register(signal.SIGUSR1, file=_stacks_file,
                          all_threads=True)

_IDENTITY_HEADERS = ('X-Identity-Status', 'X-User-Id', 'X-Project-Id',
                     'X-Roles', 'X-Tenant-Id')


class TokenToIdentityFilter:
    def __init__(self, app):
        self.app = app

    @webob.dec.wsgify
    def __call__(self, req):
        # Never trust identity headers the client sent itself.
        for name in _IDENTITY_HEADERS:
            req.headers.pop(name, None)
        token = urllib.parse.unquote(req.headers.get('X-Auth-Token', ''))
        parts = token.split(':')
        if len(parts) == 3 and all(parts[:2]):
            user, project, roles = parts
            req.headers['X-Identity-Status'] = 'Confirmed'
            req.headers['X-User-Id'] = user
            req.headers['X-Project-Id'] = project
            req.headers['X-Roles'] = roles
        return req.get_response(self.app)


def filter_factory(global_conf, **local_conf):
    return TokenToIdentityFilter
