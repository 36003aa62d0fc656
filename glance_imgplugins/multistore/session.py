"""An Image API v2 client from the usual OpenStack settings.

In order:

1. A token and an endpoint (``--os-auth-token``/``OS_AUTH_TOKEN`` or
   ``OS_TOKEN``, and ``--os-image-url``/``OS_IMAGE_URL``): glanceclient
   talks to that endpoint with that token, no identity service involved.
   ``OS_AUTH_TYPE=none`` (or ``noauth``) also takes this path: handing it
   to glanceclient's session code crashes it.
2. Otherwise openstacksdk's ``openstack.config`` (``--os-cloud``/
   ``OS_CLOUD`` and ``clouds.yaml``, plus the ``OS_*`` variables) builds a
   keystoneauth session; the image endpoint comes from the catalog or from
   ``image_endpoint_override``.
3. Without openstacksdk, keystoneauth1's loader for ``OS_AUTH_TYPE``
   (default ``password``) reads its options from ``OS_*`` variables.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from glance_imgplugins import exception

_NO_AUTH = ('none', 'noauth')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'connection', 'Defaults come from OS_* variables and clouds.yaml.')
    group.add_argument('--os-cloud', metavar='NAME',
                       help='Cloud in clouds.yaml (default: $OS_CLOUD).')
    group.add_argument('--os-image-url', metavar='URL',
                       help='Image API endpoint, used with a token '
                            '(default: $OS_IMAGE_URL).')
    group.add_argument('--os-auth-token', metavar='TOKEN',
                       help='Token for --os-image-url (default: '
                            '$OS_AUTH_TOKEN).')
    group.add_argument('--os-region-name', metavar='REGION',
                       help='Region of the image endpoint (default: '
                            '$OS_REGION_NAME).')
    group.add_argument('--os-interface', metavar='INTERFACE',
                       help='Endpoint interface: public, internal, admin '
                            '(default: $OS_INTERFACE or public).')
    group.add_argument('--insecure', action='store_true', default=None,
                       help='Do not verify the server TLS certificate.')
    group.add_argument('--os-cacert', metavar='FILE',
                       help='CA bundle (default: $OS_CACERT).')


def _setting(args: argparse.Namespace, env: Mapping[str, str], attr: str,
             *names: str) -> str | None:
    value = getattr(args, attr, None)
    if value:
        return str(value)
    for name in names:
        if env.get(name):
            return env[name]
    return None


def make_client(args: argparse.Namespace,
                env: Mapping[str, str] | None = None) -> Any:
    """A ``glanceclient.v2.client.Client`` for ``args`` and ``env``."""
    from glanceclient import client as gclient

    env = os.environ if env is None else env
    token = _setting(args, env, 'os_auth_token', 'OS_AUTH_TOKEN', 'OS_TOKEN')
    endpoint = _setting(args, env, 'os_image_url', 'OS_IMAGE_URL')
    auth_type = (env.get('OS_AUTH_TYPE') or '').lower()
    cacert = _setting(args, env, 'os_cacert', 'OS_CACERT')
    insecure = bool(getattr(args, 'insecure', None)) or (
        env.get('OS_INSECURE', '').lower() in ('1', 'true', 'yes'))

    if auth_type in _NO_AUTH or (token and endpoint):
        endpoint = endpoint or env.get('OS_ENDPOINT')
        if not endpoint:
            raise exception.ApiConnectionError(
                reason='OS_AUTH_TYPE=%s needs an endpoint: set '
                       'OS_IMAGE_URL (or --os-image-url)' % auth_type)
        return gclient.Client('2', endpoint=endpoint, token=token,
                              insecure=insecure, cacert=cacert)

    session, endpoint_override, interface, region = _keystone_session(
        args, env, insecure, cacert)
    kwargs: dict[str, Any] = {'session': session, 'interface': interface,
                              'service_type': 'image'}
    if region:
        kwargs['region_name'] = region
    return gclient.Client('2', endpoint=endpoint_override or endpoint,
                          **kwargs)


def _keystone_session(args: argparse.Namespace, env: Mapping[str, str],
                      insecure: bool, cacert: str | None
                      ) -> tuple[Any, str | None, str, str | None]:
    cloud = _setting(args, env, 'os_cloud', 'OS_CLOUD')
    region = _setting(args, env, 'os_region_name', 'OS_REGION_NAME')
    interface = _setting(args, env, 'os_interface', 'OS_INTERFACE') or \
        'public'
    try:
        import openstack.config
        import openstack.exceptions
    except ImportError:
        openstack = None  # type: ignore[assignment]
    if openstack is not None:
        try:
            config = openstack.config.OpenStackConfig()
            kwargs: dict[str, Any] = {}
            if region:
                kwargs['region_name'] = region
            if getattr(args, 'os_interface', None):
                kwargs['interface'] = args.os_interface
            if insecure:
                kwargs['verify'] = False
            elif cacert:
                kwargs['cacert'] = cacert
            cloud_region = config.get_one(cloud=cloud, **kwargs)
            session = cloud_region.get_session()
            override = cloud_region.get_endpoint('image')
            found = cloud_region.get_interface('image')
            return (session, override,
                    found if isinstance(found, str) else interface,
                    cloud_region.region_name or region)
        except openstack.exceptions.ConfigException as exc:
            raise exception.ApiConnectionError(
                reason='clouds.yaml / OS_* settings: %s' % exc) from exc
        except Exception as exc:  # keystoneauth's missing-option errors
            raise exception.ApiConnectionError(
                reason='%s: %s (set OS_IMAGE_URL and OS_AUTH_TOKEN, or '
                       'OS_CLOUD, or OS_AUTH_URL and credentials)' % (
                           type(exc).__name__, exc)) from exc
    return _ksa_session(env, insecure, cacert) + (interface, region)


def _ksa_session(env: Mapping[str, str], insecure: bool,
                 cacert: str | None) -> tuple[Any, None]:
    from keystoneauth1 import exceptions as ksa_exc
    from keystoneauth1 import loading, session

    auth_type = env.get('OS_AUTH_TYPE') or 'password'
    try:
        loader: Any = loading.get_plugin_loader(auth_type)
    except ksa_exc.NoMatchingPlugin as exc:
        raise exception.ApiConnectionError(
            reason='unknown OS_AUTH_TYPE %s' % auth_type) from exc
    values: dict[str, Any] = {}
    for opt in loader.get_options():
        for name in ['OS_' + n.upper().replace('-', '_')
                     for n in [opt.name] + [d.name for d in opt.deprecated]]:
            if env.get(name):
                values[opt.dest] = env[name]
                break
    try:
        auth = loader.load_from_options(**values)
    except ksa_exc.MissingRequiredOptions as exc:
        raise exception.ApiConnectionError(
            reason='%s (set OS_IMAGE_URL and OS_AUTH_TOKEN, or OS_CLOUD, or '
                   'OS_AUTH_URL and credentials)' % exc) from exc
    verify: bool | str = False if insecure else (cacert or True)
    return session.Session(auth=auth, verify=verify), None
