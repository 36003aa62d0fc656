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

"""Sphinx configuration for the glance-imgplugins documentation."""

# No autodoc: the pages are written by hand, so building them needs neither
# Glance nor Ceph and takes seconds (CI builds them on every run).
extensions = [
    'openstackdocstheme',
]

openstackdocs_repo_name = 'x/glance-imgplugins'
openstackdocs_bug_project = 'glance-imgplugins'
openstackdocs_bug_tag = 'docs'
openstackdocs_auto_name = False

project = 'glance-imgplugins'
copyright = '2026, glance-imgplugins developers'
master_doc = 'index'
source_suffix = {'.rst': 'restructuredtext'}
exclude_patterns = ['_build']
pygments_style = 'native'

html_theme = 'openstackdocs'
html_static_path: list[str] = []
