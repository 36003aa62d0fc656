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

"""Tempest's image API tests against a local Glance with our plugins.

Starts a real Keystone, a real single-node Ceph, a PostgreSQL, a loopback
web server for web-download and a Glance 33 (gunicorn, or uWSGI with
``--uwsgi``) with ``image_introspection``, ``format_conversion`` and
``property_injection`` and three stores (``ceph`` on ``rbd_sparse``,
``cheap`` and ``fast`` on files), writes ``tempest.conf`` and runs the
tests named in ``TESTS`` with ``tempest run``.  Exit status: Tempest's
(0 only with no failure).

Usage: python -m tests.tempest.run [--workdir DIR] [--uwsgi] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import keystone as ks
from tests.support.ceph_cluster import CephCluster, missing_prerequisites
from tests.support.glance_server import BIN_DIR, GlanceServer
from tests.support.postgres import Postgres
from tests.tempest import os_test_images

MiB = 1024 * 1024

# The image API tests that exercise imports, stores and formats.  The
# compute cases of ImagesFormatTest are left out: they boot servers.
TESTS = [
    r'tempest\.api\.image\.v2\.test_images\.ImportImagesTest\.',
    r'tempest\.api\.image\.v2\.test_images\.MultiStoresImportImagesTest\.',
    r'tempest\.api\.image\.v2\.test_images\.StoreWeightTest\.',
    r'tempest\.api\.image\.v2\.test_images\.BasicOperationsImagesTest\.',
    r'tempest\.api\.image\.v2\.admin\.test_images\.ImportCopyImagesTest\.',
    r'tempest\.api\.image\.v2\.admin\.test_images\.MultiStoresImagesTest\.',
    r'tempest\.api\.image\.v2\.admin\.test_image_task\.ImageTaskCreate\.',
    r'tempest\.api\.image\.v2\.test_images_negative\.',
    r'tempest\.api\.image\.v2\.test_images_formats\.ImagesFormatTest\.'
    r'test_accept_',
]

# Tempest compares an image's ``stores`` with the sorted store list, and
# Glance 33 lists stores by weight, highest first: weights follow names.
STORE_WEIGHTS = {'ceph': 300, 'cheap': 200, 'fast': 100}

RULES = """\
version: 1
rules:
  - name: provenance
    set:
      imported_by: "${user_id}@${project_id} via ${import_method}"
"""


def web_server(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def web_images(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    raw = root / 'image.raw'
    with open(raw, 'wb') as f:
        f.truncate(4 * MiB)
        f.write(os.urandom(256 * 1024))
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
                    str(raw), str(root / 'image.qcow2')], check=True)


def tempest_conf(keystone: ks.Keystone, web_port: int,
                 manifest: Path) -> dict[str, dict[str, Any]]:
    admin = ks.USERS['admin']
    web = 'http://127.0.0.1:%d' % web_port
    return {
        'DEFAULT': {'log_file': 'tempest.log', 'debug': True},
        'auth': {'use_dynamic_credentials': True,
                 'admin_username': admin.name,
                 'admin_password': admin.password,
                 'admin_project_name': admin.project,
                 'admin_domain_name': ks.DOMAIN,
                 'create_isolated_networks': False},
        'identity': {'uri_v3': keystone.auth_url, 'auth_version': 'v3',
                     'region': 'RegionOne', 'v3_endpoint_type': 'public'},
        'identity-feature-enabled': {'api_v2': False},
        # nova: ImagesFormatTest derives from the compute base class; the
        # import cases run here make no compute call.
        'service_available': {'glance': True, 'nova': True,
                              'neutron': False, 'cinder': False,
                              'swift': False, 'horizon': False},
        'image': {'build_timeout': 180,
                  'http_image': web + '/image.raw',
                  'http_qcow2_image': web + '/image.qcow2',
                  'images_manifest_file': str(manifest),
                  'disk_formats': 'ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,'
                                  'vdi,iso,ploop'},
        'image-feature-enabled': {'import_image': True,
                                  'os_glance_reserved': True,
                                  'image_conversion': True,
                                  'store_weight_enabled': True},
        'enforce_scope': {'glance': True, 'keystone': True},
    }


def write_conf(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, options in sections.items():
        lines.append('[%s]' % name)
        for key, value in options.items():
            if isinstance(value, bool):
                value = str(value)
            lines.append('%s = %s' % (key, value))
        lines.append('')
    path.write_text('\n'.join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='run-tempest',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', type=Path)
    parser.add_argument('--uwsgi', action='store_true',
                        help='serve Glance with uWSGI, not gunicorn')
    parser.add_argument('--keep', action='store_true',
                        help='keep the work folder')
    parser.add_argument('--concurrency', type=int, default=2)
    args = parser.parse_args(argv)
    reason = missing_prerequisites()
    if reason:
        print('run-tempest: %s' % reason, file=sys.stderr)
        return 2
    workdir = (args.workdir or Path(tempfile.mkdtemp(
        prefix='imgplugins-tempest-'))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    keystone = ks.Keystone(workdir / 'keystone')
    ceph = CephCluster(workdir / 'ceph')
    # Tempest runs tests side by side: sqlite answers "database is locked".
    postgres = Postgres()
    glance = None
    web = None
    rc = 1
    try:
        keystone.start()
        postgres.start()
        ceph.start()
        ceph.create_pool('images')
        web_images(workdir / 'www')
        web, web_port = web_server(workdir / 'www')
        manifest = os_test_images.build(workdir / 'os-test-images')
        rules = workdir / 'rules.yaml'
        rules.write_text(RULES)
        stores = {
            'ceph': ('rbd_sparse', ceph.store_options(
                'images', weight=STORE_WEIGHTS['ceph'])),
            'cheap': ('file', {'weight': STORE_WEIGHTS['cheap']}),
            'fast': ('file', {'weight': STORE_WEIGHTS['fast']}),
        }
        glance = GlanceServer(
            workdir / 'glance', stores=stores, default_store='fast',
            plugins=['image_introspection', 'format_conversion',
                     'property_injection'],
            import_conf={'property_injection': {'rules_file': str(rules)}},
            allowed_ports=[web_port], keystone=keystone, region='RegionOne',
            api_conf={'database': {
                'connection': postgres.database('glance')}},
            server='uwsgi' if args.uwsgi else 'gunicorn', threads=8)
        glance.start()
        print('run-tempest: Keystone %s, Glance %s (%s), Ceph, web %d '
              'ready in %.0f s' % (keystone.url, glance.url, glance.server,
                                   web_port, time.monotonic() - started),
              flush=True)
        rc = run_tempest(workdir, keystone, web_port, manifest,
                         args.concurrency)
        return rc
    finally:
        if glance is not None:
            glance.stop()
        if web is not None:
            web.shutdown()
        ceph.stop()
        postgres.stop()
        keystone.stop()
        elapsed = time.monotonic() - started
        # Keep the logs of a failed run (and of any run when asked to).
        if rc == 0 and not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
            print('run-tempest: %.0f s in all' % elapsed, flush=True)
        else:
            if not args.keep:
                shutil.rmtree(workdir / 'ceph', ignore_errors=True)
            print('run-tempest: %.0f s in all; logs in %s (tempest/'
                  'tempest.log, glance/glance-api.log)' % (elapsed, workdir),
                  flush=True)


def run_tempest(workdir: Path, keystone: ks.Keystone, web_port: int,
                manifest: Path, concurrency: int) -> int:
    home = workdir / 'home'
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    # Tempest writes ~/.tempest: keep it in the work folder.
    env['HOME'] = str(home)
    env['PATH'] = os.pathsep.join([str(BIN_DIR), env.get('PATH', '')])
    ws = workdir / 'tempest'
    if not (ws / '.stestr.conf').exists():
        subprocess.run([str(BIN_DIR / 'tempest'), 'init', str(ws)],
                       env=env, check=True, capture_output=True)
    conf = ws / 'etc' / 'tempest.conf'
    write_conf(conf, tempest_conf(keystone, web_port, manifest))
    regex = '(%s)' % '|'.join(TESTS)
    proc = subprocess.run(
        [str(BIN_DIR / 'tempest'), 'run', '--config-file', str(conf),
         '--regex', regex, '--concurrency', str(concurrency)],
        cwd=ws, env=env, stdin=subprocess.DEVNULL)
    return proc.returncode


if __name__ == '__main__':
    sys.exit(main())
