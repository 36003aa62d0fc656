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

"""Stopping the services the tests start (each in its own session)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_session(proc: subprocess.Popen[bytes] | None,
                 sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and everything in its process group: ``sig`` first
    (SIGTERM: a clean stop; SIGKILL: a crash), SIGKILL after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
