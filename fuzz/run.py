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

"""Time-boxed fuzzing: ``make fuzz`` and the smoke run of ``make test``.

``python -m fuzz.run [--time SECONDS] [--targets inspection,rules]
[--work DIR] [--seed N --runs N]``: builds the seed corpora once
(``WORK/seeds``), then runs each target as its own libFuzzer process, all
targets at once (one core each), for SECONDS.  A target that finds a
crash has the input saved as ``WORK/crashes/<target>/crash-<sha1>`` and is
restarted on its grown corpus (``WORK/corpus/<target>``) until the time is
up.  Prints per target the executions, coverage (libFuzzer's
``cov``/``ft``), corpus size and crashes; exit status 1 when any crash was
found or a target did not start.

``--seed`` and ``--runs`` bound a run: libFuzzer's random seed fixed and at
most N executions per target (SECONDS still bounds it).  The smoke run of
``make test`` uses them so that it walks about the same short path each
time (not exactly: some seed images carry random UUIDs and salts) rather
than as far as the day's load allows; exploring is ``make fuzz``'s job.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGETS = {
    'inspection': ('fuzz.fuzz_inspection', 'inspection.dict',
                   # build_corpus cuts the seeds to 1 MiB.
                   ['-max_len=1048576']),
    'rules': ('fuzz.fuzz_rules', 'rules.dict', ['-max_len=8192']),
}
# A hang is an input slower than this many seconds (the checks' own bound
# is 2 s; this catches what never returns).
HANG_SECONDS = 10
_STATS = re.compile(r'^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/')


@dataclasses.dataclass
class Stats:
    execs: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    runs: int = 0
    crashes: list[str] = dataclasses.field(default_factory=list)
    # A run that never started fuzzing (atheris missing, an import error).
    broken: str | None = None


def _libfuzzer_args(target: str, work: pathlib.Path, seconds: int,
                    seed: int | None = None,
                    runs: int | None = None) -> list[str]:
    module, dictionary, extra = TARGETS[target]
    corpus = work / 'corpus' / target
    crashes = work / 'crashes' / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    return [sys.executable, '-m', module,
            '-dict=%s' % (_ROOT / 'fuzz' / dictionary),
            '-max_total_time=%d' % max(seconds, 1),
            '-timeout=%d' % HANG_SECONDS, '-rss_limit_mb=2048',
            '-print_final_stats=1',
            '-artifact_prefix=%s/' % crashes, *extra,
            *(['-seed=%d' % seed] if seed is not None else []),
            *(['-runs=%d' % runs] if runs is not None else []),
            str(corpus), str(work / 'seeds' / target)]


def _start(target: str, work: pathlib.Path, deadline: float,
           stats: Stats, seed: int | None = None,
           runs: int | None = None) -> subprocess.Popen[str] | None:
    left = int(deadline - time.monotonic())
    if left < 2 or (runs is not None and stats.execs >= runs):
        return None
    stats.runs += 1
    log = open(work / ('%s.log' % target), 'a')
    args = _libfuzzer_args(target, work, left, seed,
                           None if runs is None else runs - stats.execs)
    return subprocess.Popen(args, cwd=_ROOT,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def _absorb(target: str, work: pathlib.Path, offset: int,
            stats: Stats) -> int:
    """Add one run's figures (the log from ``offset``) to ``stats``."""
    log = work / ('%s.log' % target)
    with open(log, errors='replace') as f:
        f.seek(offset)
        text = f.read()
    last = None
    for line in text.splitlines():
        m = _STATS.match(line)
        if m:
            last = m
        if 'Test unit written to ' in line:
            stats.crashes.append(line.rsplit(' ', 1)[-1])
    done = re.search(r'stat::number_of_executed_units: (\d+)', text)
    if done:
        stats.execs += int(done.group(1))
    elif last:
        stats.execs += int(last.group(1))
    if last:
        stats.cov, stats.ft = int(last.group(2)), int(last.group(3))
        stats.corpus = int(last.group(4))
    elif 'INITED' not in text and 'Test unit written' not in text:
        stats.broken = '\n'.join(text.splitlines()[-5:])
    return log.stat().st_size


def fuzz(targets: list[str], seconds: int, work: pathlib.Path,
         seed: int | None = None,
         runs: int | None = None) -> dict[str, Stats]:
    if not (work / 'seeds').is_dir():
        subprocess.run([sys.executable, '-m', 'fuzz.build_corpus',
                        str(work / 'seeds')], cwd=_ROOT, check=True)
    deadline = time.monotonic() + seconds
    stats = {t: Stats() for t in targets}
    offsets = {t: 0 for t in targets}
    for t in targets:
        (work / ('%s.log' % t)).unlink(missing_ok=True)
    procs = {t: _start(t, work, deadline, stats[t], seed, runs)
             for t in targets}
    while any(procs.values()):
        time.sleep(0.5)
        for t, proc in procs.items():
            if proc is None or proc.poll() is None:
                continue
            offsets[t] = _absorb(t, work, offsets[t], stats[t])
            # A crash ends a libFuzzer run: go on with the grown corpus.
            procs[t] = None if stats[t].broken else _start(
                t, work, deadline, stats[t], seed, runs)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--time', type=int,
                        default=int(os.environ.get('FUZZ_TIME', 600)),
                        help='seconds per target, all targets at once '
                        '(default: $FUZZ_TIME or 600)')
    parser.add_argument('--targets', default=os.environ.get(
        'FUZZ_TARGETS', ','.join(TARGETS)))
    parser.add_argument('--work', type=pathlib.Path, default=pathlib.Path(
        os.environ.get('FUZZ_WORK', _ROOT / 'fuzz' / 'work')))
    parser.add_argument('--seed', type=int,
                        help="libFuzzer's random seed (default: a new one)")
    parser.add_argument('--runs', type=int,
                        help='at most this many executions per target')
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(',') if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error('unknown target(s) %s (known: %s)'
                     % (', '.join(unknown), ', '.join(TARGETS)))
    stats = fuzz(targets, args.time, args.work.resolve(), args.seed,
                 args.runs)
    found = False
    for t, s in stats.items():
        print('fuzz %-10s %9d executions within %d s (%d run%s), cov %d ft '
              '%d, corpus %d, crashes %d' % (
                  t, s.execs, args.time, s.runs, '' if s.runs == 1 else 's',
                  s.cov, s.ft, s.corpus, len(s.crashes)))
        for crash in s.crashes:
            found = True
            print('  crash: %s' % crash)
        if s.broken:
            found = True
            print('  the fuzzer did not start:\n%s' % s.broken)
    if any(s.crashes for s in stats.values()):
        print('Reproduce: python -m fuzz.fuzz_<target> CRASH_FILE; fix it, '
              'then add the file to tests/unit/data/fuzz/<target>/.')
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main())
