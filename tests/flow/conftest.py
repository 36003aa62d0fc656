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

"""Fixtures for the flow layer: a real taskflow engine around our plugins.

Only Glance's repositories (database access) are replaced, by in-memory ones
that keep the semantics the import flow relies on: ``get`` returns a fresh
copy (unsaved changes are lost, as when ``ImportActionWrapper`` does not save
after an exception), ``save(image, from_state)`` refuses a stale status, and
``delete_property_atomic`` drops the import lock.  Everything else is real:
Glance's ``ImportActionWrapper`` and domain ``Image``/``Task`` (status
transitions validated), ``_ImageLock`` and ``_VerifyStaging`` from
``api_image_import``, qemu-img, and the corpus images.
"""

from __future__ import annotations

import copy
import pathlib
import shutil
import subprocess
import uuid
from typing import Any, Callable, Iterator

import pytest
from glance.async_.flows import api_image_import
from glance.common import exception as glance_exception
from glance import domain
from oslo_config import cfg
import taskflow.engines
from taskflow.patterns import linear_flow as lf
from taskflow import retry
from taskflow import task as tf_task

from tests.support import images

TASK_TYPE = 'api_image_import'
STORES = ['fast', 'cheap']


def clone(image: domain.Image) -> domain.Image:
    """A copy as the database would hand out (deepcopy drops the contents
    of Glance's ExtraProperties mapping)."""
    new = copy.copy(image)
    new.extra_properties = domain.ExtraProperties(
        dict(image.extra_properties))
    new.locations = copy.deepcopy(list(image.locations))
    new.tags = copy.copy(image.tags)
    return new


class ImageRepo:
    """In-memory stand-in for Glance's ImageRepo (domain objects inside)."""

    def __init__(self) -> None:
        self.images: dict[str, domain.Image] = {}
        self.saves = 0

    def add(self, image: domain.Image) -> None:
        self.images[image.image_id] = clone(image)

    def get(self, image_id: str) -> domain.Image:
        try:
            return clone(self.images[image_id])
        except KeyError:
            raise glance_exception.ImageNotFound(image_id) from None

    def save(self, image: domain.Image, from_state: str | None = None
             ) -> None:
        stored = self.images[image.image_id]
        if from_state is not None and stored.status != from_state:
            raise glance_exception.Conflict(
                'status is %s, not %s' % (stored.status, from_state))
        self.saves += 1
        self.images[image.image_id] = clone(image)

    def delete_property_atomic(self, image: domain.Image, name: str,
                               value: str) -> None:
        stored = self.images[image.image_id]
        if stored.extra_properties.get(name) != value:
            raise glance_exception.NotFound()
        del stored.extra_properties[name]


class TaskRepo:
    """In-memory stand-in for Glance's TaskRepo; records every message."""

    def __init__(self, task: domain.Task) -> None:
        self.task = task
        self.messages: list[str] = []
        self.fail_saves = False

    def get(self, task_id: str) -> domain.Task | None:
        return self.task if task_id == self.task.task_id else None

    def save(self, task: domain.Task) -> None:
        if self.fail_saves:
            raise glance_exception.GlanceException('database is locked')
        self.messages.append(task.message)


class Boom(tf_task.Task):
    """A later task (a store import, say) that fails."""

    def execute(self, file_path: str) -> None:
        self.seen = file_path
        raise RuntimeError('store exploded')


class Record(tf_task.Task):
    """A later task that records the file_path it was given."""

    seen: list[str] = []

    def execute(self, file_path: str) -> None:
        Record.seen.append(file_path)


class Import:
    """One staged image and the Glance objects an import flow needs."""

    def __init__(self, staging: pathlib.Path, source: pathlib.Path,
                 disk_format: str, import_method: str = 'glance-direct',
                 properties: dict[str, str] | None = None) -> None:
        self.image_id = str(uuid.uuid4())
        self.image_repo = ImageRepo()
        self._begin_task()
        self.staged = staging / self.image_id
        # cp --sparse keeps holes: the staged copy is what Glance would
        # hold after ``glance image-stage``.
        subprocess.run(['cp', '--sparse=always', str(source),
                        str(self.staged)], check=True)
        self.source = source
        self.import_method = import_method
        image = domain.ImageFactory().new_image(
            image_id=self.image_id, name='test', disk_format=disk_format,
            container_format='bare', owner='project',
            extra_properties=dict(properties or {}))
        image.status = 'uploading'
        image.size = self.staged.stat().st_size
        image.status = 'importing'
        image.extra_properties['os_glance_import_task'] = self.task_id
        image.extra_properties['os_glance_importing_to_stores'] = ','.join(
            sorted(STORES))
        self.image_repo.add(image)

    def _begin_task(self) -> None:
        """A new import task for the image, as the API creates one."""
        glance_task = domain.TaskFactory().new_task(
            task_type=TASK_TYPE, owner='project', image_id=self.image_id,
            user_id='user', request_id='req', task_input={})
        glance_task.begin_processing()
        self.task_id = glance_task.task_id
        self.task_repo = TaskRepo(glance_task)
        self.action_wrapper = api_image_import.ImportActionWrapper(
            self.image_repo, self.image_id, self.task_id)

    def restart(self) -> None:
        """What ``glance image-import --import-method glance-direct`` does
        to the image again: the API requires it ``uploading`` (staged), then
        get_flow() locks it, marks it importing and clears failed stores."""
        image = self.image_repo.get(self.image_id)
        assert image.status == 'uploading', image.status
        self._begin_task()
        image.extra_properties['os_glance_import_task'] = self.task_id
        self.image_repo.save(image)
        with self.action_wrapper as action:
            action.set_image_attribute(status='importing')
            action.add_importing_stores(STORES)
            action.remove_failed_stores(STORES)

    @property
    def image(self) -> domain.Image:
        return self.image_repo.images[self.image_id]

    def kwargs(self) -> dict[str, Any]:
        """What Glance passes to every plugin's get_flow()."""
        return {
            'task_id': self.task_id, 'task_type': TASK_TYPE,
            'context': None, 'task_repo': self.task_repo,
            'image_repo': self.image_repo, 'image_factory': None,
            'backend': list(STORES), 'image_id': self.image_id,
            'import_req': {'method': {'name': self.import_method}},
            'action_wrapper': self.action_wrapper,
        }

    def flow(self, plugins: list[Callable[..., Any]],
             tail: list[tf_task.Task] = ()) -> lf.Flow:
        """Glance's flow shape: lock, staging, plugins, then ``tail``."""
        flow = lf.Flow(TASK_TYPE, retry=retry.AlwaysRevert())
        flow.add(api_image_import._ImageLock(self.task_id, TASK_TYPE,
                                             self.action_wrapper))
        flow.add(api_image_import._VerifyStaging(
            self.task_id, TASK_TYPE, self.task_repo,
            'file://%s' % self.staged))
        for get_flow in plugins:
            flow.add(get_flow(**self.kwargs()))
        for t in tail:
            flow.add(t)
        return flow

    def run(self, plugins: list[Callable[..., Any]],
            tail: list[tf_task.Task] = ()) -> None:
        # The engine Glance uses by default ([taskflow_executor]
        # engine_mode = parallel).
        engine = taskflow.engines.load(self.flow(plugins, tail),
                                       engine='parallel', max_workers=2)
        engine.run()


def qemu_convert(src: pathlib.Path, src_format: str, dst: pathlib.Path,
                 dst_format: str) -> pathlib.Path:
    subprocess.run(['qemu-img', 'convert', '-f', src_format, '-O',
                    dst_format, str(src), str(dst)], check=True,
                   capture_output=True)
    return dst


def declared_format(name: str, path: pathlib.Path) -> str:
    """The disk_format a user (or attacker) would declare for a corpus file."""
    entry = images.ENTRIES[name]
    if entry.format in ('raw', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi', 'iso'):
        return entry.format
    return {'.qcow2': 'qcow2', '.vmdk': 'vmdk', '.iso': 'iso',
            '.vhd': 'vhd'}.get(path.suffix, 'raw')


@pytest.fixture(scope='session')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> images.Corpus:
    return images.Corpus(tmp_path_factory.mktemp('corpus'))


class Overrides:
    """``CONF.set_override`` for one test, cleared afterwards (the
    ``fixtures`` package behind oslo.config's own fixture is not installed)."""

    def __init__(self) -> None:
        self._set: list[tuple[str, str | None]] = []

    def config(self, group: str | None = None, **values: Any) -> None:
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group=group)
            self._set.append((name, group))

    def cleanUp(self) -> None:
        for name, group in reversed(self._set):
            cfg.CONF.clear_override(name, group=group)


@pytest.fixture
def conf() -> Iterator[Overrides]:
    fixture = Overrides()
    # Multi-store mode, as the functional Glance runs: _VerifyStaging then
    # needs no legacy staging store.
    fixture.config(enabled_backends={'fast': 'file', 'cheap': 'file'})
    yield fixture
    fixture.cleanUp()


@pytest.fixture
def staging(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / 'staging'
    path.mkdir()
    return path


@pytest.fixture
def make_import(staging: pathlib.Path, corpus: images.Corpus,
                conf: Overrides) -> Callable[..., Import]:
    def make(name: str, disk_format: str | None = None, **kwargs: Any
             ) -> Import:
        path = corpus.path(name)
        return Import(staging, path,
                      disk_format or declared_format(name, path), **kwargs)
    return make


@pytest.fixture
def scratch(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / 'scratch'
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
