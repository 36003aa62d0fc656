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

"""The main job: a real local Glance 33 with glance-imgplugins enabled.

Starts a real Keystone (fernet tokens, gunicorn) and Glance (gunicorn,
sqlite, two file stores, keystonemiddleware) with our import plugins,
checks the configuration with ``glance-imgplugins check-config``, logs in
with a password as a member of ``demo-project``, imports sample images made
by qemu-img with ``glance image-create-via-import`` into both stores, shows
what our plugins did, and stops the services.  It writes an ``openrc`` and
a ``clouds.yaml`` and prints them.

Usage: .venv/bin/python tools/demo.py [--workdir DIR] [--keep] [--ceph]

With --ceph, a real single-node Ceph joins as a third store driven by our
rbd_sparse driver, and the demo shows how little of it the images occupy.
With DEMO_KEEP=1 (``DEMO_KEEP=1 make demo``) Keystone and Glance stay up
until Ctrl-C, for ``glance`` and ``openstack`` commands of your own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import keystone as ks  # noqa: E402
from tests.support.glance_server import (  # noqa: E402
    ADMIN_TOKEN, BIN_DIR, GlanceServer, parse_table)

# The demo user: a member of demo-project (tests/support/keystone.py).
USER = 'alice'

MiB = 1024 * 1024
PLUGINS = ['image_introspection', 'format_conversion', 'property_injection']
SHOWN = ('name', 'status', 'disk_format', 'container_format', 'size',
         'virtual_size', 'stores', 'checksum')

RULES = textwrap.dedent('''\
    # Demo rules for the property_injection plugin
    # (schema: etc/property-injection-rules.yaml.example).
    version: 1
    rules:
      - name: provenance
        set:
          imported_by: "${user_id}@${project_id}"
          imported_via: "${import_method}"
          img_source_format: "${original_disk_format}"
        protect: [imported_*]
      # A detected fact, which users cannot fake, drives this one.
      - name: lsi-to-virtio-scsi
        match:
          facts:
            vmware_adaptertype: [lsiLogic, lsiLogicsas]
        set:
          hw_scsi_model: virtio-scsi
''')


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_images(folder: Path) -> dict[str, tuple[Path, str]]:
    raw = folder / 'sample.raw'
    with open(raw, 'wb') as f:
        f.truncate(256 * MiB)
        for offset in range(0, 256 * MiB, 32 * MiB):
            f.seek(offset)
            f.write(b'glance-imgplugins demo data\n' * 40000)
    qcow2 = folder / 'sample.qcow2'
    run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', str(raw),
        str(qcow2))
    vmdk = folder / 'sample.vmdk'
    run('qemu-img', 'convert', '-f', 'raw', '-O', 'vmdk', '-o',
        'subformat=streamOptimized,adapter_type=lsilogic', str(raw),
        str(vmdk))
    evil = folder / 'evil.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/passwd',
        str(evil))
    return {'sample-qcow2': (qcow2, 'qcow2'),
            'sample-vmdk': (vmdk, 'vmdk'),
            'hostile-backing-file': (evil, 'qcow2')}


def show(glance: GlanceServer, image_id: str) -> None:
    image = glance.image(image_id)
    core = set(SHOWN) | {'id', 'owner', 'created_at', 'updated_at', 'file',
                         'schema', 'self', 'visibility', 'protected',
                         'tags', 'locations', 'direct_url', 'min_disk',
                         'min_ram', 'os_hash_algo', 'os_hash_value',
                         'os_hidden'}
    for key in SHOWN:
        print('    %-28s %s' % (key, image.get(key)))
    print('    properties set on import:')
    for key in sorted(set(image) - core):
        print('      %-26s %s' % (key, image[key]))
    message = glance.last_task_message(image_id)
    print('    import task message:       %s' % (message or '(none)'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', help='keep everything in this folder')
    parser.add_argument('--keep', action='store_true',
                        help='do not delete the work folder')
    parser.add_argument('--ceph', action='store_true',
                        help='add a real single-node Ceph as a third store, '
                             'driven by rbd_sparse')
    args = parser.parse_args()
    keep_running = os.environ.get('DEMO_KEEP', '') not in ('', '0')
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='imgplugins-'))
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        failures = run_demo(workdir, stack, args.ceph)
        if keep_running:
            wait_for_ctrl_c(workdir)
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print('\n== Keystone and Glance stopped. %s' % (
        'All as expected.' if not failures
        else '%d unexpected result(s).' % failures))
    return 1 if failures else 0


def wait_for_ctrl_c(workdir: Path) -> None:
    print('\n== DEMO_KEEP: Keystone and Glance keep running; in another '
          'shell:\n'
          '    source %s/openrc && glance image-list\n'
          '    OS_CLIENT_CONFIG_FILE=%s/clouds.yaml %s/openstack --os-cloud '
          '%s image list\n'
          '   (clouds: one per test user, e.g. admin, alice, bob, dave)\n'
          '== Ctrl-C stops them.' % (workdir, workdir, BIN_DIR, USER),
          flush=True)
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Started in the background SIGINT may be ignored: say what stops us.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()


def login(keystone: ks.Keystone, glance: GlanceServer, workdir: Path
          ) -> dict[str, str]:
    """A password login, as a user would: openrc, clouds.yaml, a token."""
    env = keystone.password_env(USER, glance.region)
    openrc = workdir / 'openrc'
    openrc.write_text(''.join('export %s=%s\n' % (k, shlex.quote(v))
                              for k, v in sorted(env.items())))
    clouds = keystone.clouds_yaml(workdir / 'clouds.yaml', glance.region)
    print('\n== openrc (%s)' % openrc)
    print(openrc.read_text().rstrip())
    print('\n== clouds.yaml (%s), cloud %r of %d' % (
        clouds, USER, len(ks.USERS)))
    shown, inside = ['clouds:'], False
    for line in clouds.read_text().splitlines()[1:]:
        if not line.startswith('   '):  # a cloud's name
            inside = line.strip() == USER + ':'
        if inside:
            shown.append(line)
    print('\n'.join(shown))
    print('\n== openstack --os-cloud %s token issue' % USER)
    cloud_env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(clouds),
                     OS_CLOUD=USER)
    subprocess.run([str(BIN_DIR / 'openstack'), 'token', 'issue', '-c',
                    'project_id', '-c', 'user_id', '-c', 'expires'],
                   env=cloud_env, check=True)
    sess = keystone.session(USER)
    access = sess.auth.get_access(sess)
    print('  Keystone issued a fernet token to %s (%s) in %s with roles %s'
          % (USER, access.user_id, access.project_id,
             ', '.join(sorted(access.role_names))))
    full = glance.password_env(USER)
    return full


def start_ceph(workdir: Path, stack: contextlib.ExitStack) -> Any:
    from tests.support.ceph_cluster import CephCluster
    print('== starting a single-node Ceph (bluestore on a sparse file)')
    cluster = CephCluster(workdir / 'ceph', name='demo',
                          objectstore='bluestore', bluestore_bytes=8 << 30)
    stack.callback(cluster.stop)
    return cluster.start()


def run_demo(workdir: Path, stack: contextlib.ExitStack,
             with_ceph: bool) -> int:
    rules = workdir / 'property-injection-rules.yaml'
    rules.write_text(RULES)
    stores: dict[str, Any] = {'fast': ('file', {}), 'cheap': ('file', {})}
    cluster = start_ceph(workdir, stack) if with_ceph else None
    if cluster is not None:
        stores['ceph'] = ('rbd_sparse',
                          cluster.store_options(cluster.create_pool('images')))
    store_list = ','.join(stores)
    print('== starting Keystone 30 (sqlite, fernet, keystone-manage '
          'bootstrap, gunicorn)')
    keystone = ks.Keystone(workdir / 'keystone')
    stack.callback(keystone.stop)
    keystone.start()
    print('   %s: projects %s; users %s' % (
        keystone.auth_url, ', '.join(ks.PROJECTS), ', '.join(ks.USERS)))
    glance = GlanceServer(
        workdir / 'glance', plugins=PLUGINS, stores=stores,
        keystone=keystone, region='RegionOne',
        import_conf={'property_injection': {'rules_file': str(rules)},
                     'format_conversion': {'output_format': 'raw'}})
    glance.write_config()
    print('== glance-imgplugins check-config --config-dir %s'
          % glance.conf_dir)
    subprocess.run([str(BIN_DIR / 'glance-imgplugins'), 'check-config',
                    '--config-dir', str(glance.conf_dir)],
                   stderr=subprocess.DEVNULL)
    images = make_images(workdir)
    failures = 0
    for name in ('sample.vmdk', 'evil.qcow2'):
        print('\n== glance-imgplugins inspect %s' % name)
        subprocess.run([str(BIN_DIR / 'glance-imgplugins'), 'inspect',
                        str(workdir / name)], stderr=subprocess.DEVNULL)
    stack.enter_context(glance)
    print('\n== Glance 33 is running at %s (paste flavor keystone) with '
          'image_import_plugins = %s' % (glance.url, PLUGINS))
    user_env = login(keystone, glance, workdir)
    for name, (path, disk_format) in images.items():
        print('\n== glance image-create-via-import --name %s '
              '--disk-format %s --stores %s --file %s'
              % (name, disk_format, store_list, path.name))
        started = time.monotonic()
        out = glance.glance('image-create-via-import', '--name', name,
                            '--disk-format', disk_format,
                            '--container-format', 'bare',
                            '--stores', store_list, '--file', str(path),
                            env=user_env)
        image_id = parse_table(out.stdout)['id']
        image = glance.wait_for_import(image_id, token=ADMIN_TOKEN)
        print('  image %s, %.1f s' % (image_id, time.monotonic() - started))
        show(glance, image_id)
        expected = 'queued' if name.startswith('hostile') else 'active'
        if image['status'] != expected:
            failures += 1
            print('  !! expected status %s' % expected)
    print('\n== glance-imgplugins import sample.qcow2 --name via-cli '
          '--disk-format qcow2 --all-stores   (live per-store progress)')
    cli = subprocess.run(
        [str(BIN_DIR / 'glance-imgplugins'), 'import',
         str(workdir / 'sample.qcow2'), '--name', 'via-cli',
         '--disk-format', 'qcow2', '--all-stores'],
        env=user_env, stderr=subprocess.STDOUT)
    if cli.returncode != 0:
        failures += 1
        print('  !! glance-imgplugins import exited %d' % cli.returncode)
    print('\n== glance image-list   (as %s, password login)' % USER)
    print(glance.glance('image-list', env=user_env).stdout)
    print('== what the stores hold (size / allocated)')
    for name in ('fast', 'cheap'):
        for path in sorted(glance.store_dir(name).iterdir()):
            st = path.stat()
            print('    %-6s %s  %6.1f MiB / %6.1f MiB' % (
                name, path.name, st.st_size / MiB, st.st_blocks * 512 / MiB))
    if cluster is not None:
        rbd_images = cluster.rbd_ls('images')
        stored, allocated = cluster.stored_bytes()
        print('    ceph   %d RBD images of 256 MiB (rbd_sparse): the OSD '
              'holds %.1f MiB (%.1f MiB allocated) for all of them'
              % (len(rbd_images), stored / MiB, allocated / MiB))
    return failures

if __name__ == '__main__':
    sys.exit(main())
