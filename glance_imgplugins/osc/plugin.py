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

"""python-openstackclient plugin: ``openstack image inspect`` and
``openstack image multistore import|copy|watch``.

Loaded through the ``openstack.cli.extension`` entry point; its commands are
the ``openstack.image_multistore.v2`` entry points (cliff turns
``image_multistore_import`` into ``image multistore import``).  The names
stay clear of OSC's own ``image import`` / ``image stores list``.
"""

from __future__ import annotations

import argparse
from typing import Any

API_NAME = 'image_multistore'
API_VERSION_OPTION = 'os_image_multistore_api_version'
DEFAULT_API_VERSION = '2'
API_VERSIONS = ('2',)


def make_client(instance: Any) -> Any:
    """The Image API client our commands use, from OSC's ClientManager."""
    from glance_imgplugins.multistore import api

    endpoint = instance.get_endpoint_for_service_type(
        'image', region_name=instance.region_name,
        interface=instance.interface)
    return api.Api(instance.session, endpoint)


def build_option_parser(parser: argparse.ArgumentParser
                        ) -> argparse.ArgumentParser:
    # Only the Image API v2 exists: the option is there for OSC's loader.
    parser.add_argument(
        '--os-image-multistore-api-version', metavar='<version>',
        default=DEFAULT_API_VERSION, help=argparse.SUPPRESS)
    return parser
