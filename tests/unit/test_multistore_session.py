"""How the multistore commands build their glanceclient (no server needed:
building a client does not connect; the functional tests use them)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from glance_imgplugins import exception
from glance_imgplugins.multistore import session

TOKEN = 'admin:admin-project:admin'


def args(**values: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    session.add_arguments(parser)
    namespace = parser.parse_args([])
    for key, value in values.items():
        setattr(namespace, key, value)
    return namespace


def test_token_and_endpoint_from_the_environment() -> None:
    client = session.make_client(args(), {
        'OS_IMAGE_URL': 'http://127.0.0.1:9292/', 'OS_AUTH_TOKEN': TOKEN})
    assert client.http_client.endpoint == 'http://127.0.0.1:9292'
    assert client.http_client.auth_token == TOKEN


def test_command_line_wins_over_the_environment() -> None:
    client = session.make_client(
        args(os_image_url='http://127.0.0.1:1/', os_auth_token='cli'),
        {'OS_IMAGE_URL': 'http://127.0.0.1:2/', 'OS_AUTH_TOKEN': 'env'})
    assert client.http_client.endpoint == 'http://127.0.0.1:1'
    assert client.http_client.auth_token == 'cli'


def test_auth_type_none_uses_the_endpoint_without_a_token() -> None:
    client = session.make_client(args(), {
        'OS_AUTH_TYPE': 'none', 'OS_IMAGE_URL': 'http://127.0.0.1:9292'})
    assert client.http_client.endpoint == 'http://127.0.0.1:9292'
    assert client.http_client.auth_token is None


def test_auth_type_none_needs_an_endpoint() -> None:
    with pytest.raises(exception.ApiConnectionError,
                       match='OS_AUTH_TYPE=none needs an endpoint'):
        session.make_client(args(), {'OS_AUTH_TYPE': 'none'})


def test_nothing_configured_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # openstack.config reads os.environ and clouds.yaml itself.
    for key in ('OS_CLOUD', 'OS_AUTH_URL', 'OS_USERNAME', 'OS_PASSWORD',
                'OS_AUTH_TYPE', 'OS_TOKEN', 'OS_ENDPOINT'):
        monkeypatch.delenv(key, raising=False)
    empty = tmp_path / 'clouds.yaml'
    empty.write_text('clouds: {}\n')
    monkeypatch.setenv('OS_CLIENT_CONFIG_FILE', str(empty))
    with pytest.raises(exception.ApiConnectionError) as info:
        session.make_client(args(), {})
    assert 'auth_url' in str(info.value)
    assert 'OS_IMAGE_URL and OS_AUTH_TOKEN' in str(info.value)


def test_unknown_cloud_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    clouds = tmp_path / 'clouds.yaml'
    clouds.write_text('clouds:\n  central: {auth_type: admin_token, auth: '
                      '{endpoint: "http://127.0.0.1:1", token: t}}\n')
    monkeypatch.setenv('OS_CLIENT_CONFIG_FILE', str(clouds))
    with pytest.raises(exception.ApiConnectionError,
                       match="clouds.yaml / OS_\\* settings: .*edge"):
        session.make_client(args(os_cloud='edge'), {})


def test_keystoneauth_loader_without_openstacksdk() -> None:
    """The fallback path: keystoneauth1's loader reads OS_* variables."""
    sess, override = session._ksa_session(
        {'OS_AUTH_TYPE': 'admin_token', 'OS_ENDPOINT': 'http://127.0.0.1:5',
         'OS_TOKEN': TOKEN}, insecure=False, cacert=None)
    assert override is None
    assert sess.get_token() == TOKEN
    assert sess.get_endpoint(service_type='image') == 'http://127.0.0.1:5'
    with pytest.raises(exception.ApiConnectionError, match='OS_AUTH_TYPE'):
        session._ksa_session({'OS_AUTH_TYPE': 'no-such-plugin'}, False, None)
    with pytest.raises(exception.ApiConnectionError, match='auth_url'):
        session._ksa_session({'OS_AUTH_TYPE': 'password'}, False, None)
