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

"""The commands of ``glance-imgplugins`` as cliff / osc-lib commands.

The same classes serve two front ends: python-openstackclient loads them
through the ``openstack.cli.extension`` plugin in :mod:`.plugin` (``openstack
image inspect``, ``openstack image multistore import|copy|watch``), and the
``glance-imgplugins`` console script (:mod:`glance_imgplugins.cmd.main`) is
an osc-lib shell running them as ``inspect``, ``import``, ``copy``,
``watch`` and ``check-config``.  They need the ``[cli]`` extra.
"""
