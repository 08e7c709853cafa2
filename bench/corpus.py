"""A swap-like corpus: whole 4 KiB pages of real process memory.

What a swap device stores is the anonymous memory of running programs, so the
bench starts a few real programs, lets them build up their working sets, stops
them (SIGSTOP) and copies their resident anonymous pages:

- python3 importing a handful of stdlib modules and building dicts, lists of
  strings, tuples, an in-memory sqlite database, parsed JSON and floats;
- sort(1) sorting a generated log-like text file (its line buffer);
- gcc -O2 compiling a generated C file (cc1's trees and RTL).

For each process, /proc/PID/maps names the private writable anonymous
mappings (no file, [heap], [stack], [anon:...]); /proc/PID/pagemap says which
of their pages are present (only touched pages ever reach swap); the pages are
read from /proc/PID/mem. Pages are taken round robin in chunks of 64 from the
programs until the corpus has the region's size, repeating from the start if
the programs held less. Needs root (or ptrace rights over own children).

The corpus is generated at bench time into bench/corpus/ (gitignored) and
reused while its parameters match; corpus-SIZE.json describes what it holds.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from zramd import process

PAGE_BYTES = 4096
CHUNK_PAGES = 64
CORPUS_VERSION = 1

PYTHON_WORKLOAD = r"""
import sys, json, re, collections, decimal, sqlite3, random, email.message
import xml.etree.ElementTree as ET
import datetime, array, textwrap, string
scale = float(sys.argv[1])
rng = random.Random(42)
words = [''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10)))
         for _ in range(5000)]
n = int(200000 * scale)
index = {}
for i in range(n):
    index['%s_%d' % (rng.choice(words), i)] = (i, rng.random(), rng.choice(words))
rows = [[rng.choice(words), rng.randint(0, 10**6), rng.random() * 1000] for _ in range(n)]
counter = collections.Counter(rng.choice(words) for _ in range(n))
db = sqlite3.connect(':memory:')
db.execute('create table t (id integer primary key, name text, value real, note text)')
db.executemany('insert into t values (?, ?, ?, ?)',
               ((i, rng.choice(words), rng.random(), ' '.join(rng.sample(words, 5)))
                for i in range(n)))
db.commit()
start = datetime.datetime(2024, 1, 1)
docs = [json.loads(json.dumps({'id': i, 'tags': rng.sample(words, 4),
                               'when': str(start + datetime.timedelta(seconds=i * 37)),
                               'score': decimal.Decimal(i) / 7}, default=str))
        for i in range(n // 4)]
floats = array.array('d', (rng.gauss(0, 1) for _ in range(n)))
text = textwrap.fill(' '.join(rng.choice(words) for _ in range(n // 2)), 72)
root = ET.Element('root')
for i in range(n // 20):
    ET.SubElement(root, 'item', id=str(i), name=rng.choice(words)).text = rng.choice(words)
sys.stdout.write('ready\n'); sys.stdout.flush()
sys.stdin.read()
"""


def _log(msg):
    print("corpus: " + msg, flush=True)


def anonymous_pages(pid):
    """Yield the contents of every present page of pid's private writable
    anonymous mappings."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read().splitlines()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            fields = line.split(None, 5)
            start_s, end_s = fields[0].split("-")
            perms = fields[1]
            path = fields[5] if len(fields) > 5 else ""
            if not perms.startswith("rw") or perms[3] != "p":
                continue
            if path and not (path in ("[heap]", "[stack]") or path.startswith("[anon:")):
                continue
            start, end = int(start_s, 16), int(end_s, 16)
            npages = (end - start) // PAGE_BYTES
            pagemap.seek(start // PAGE_BYTES * 8)
            entries = pagemap.read(npages * 8)
            for i in range(len(entries) // 8):
                entry = int.from_bytes(entries[i * 8 : i * 8 + 8], "little")
                if not entry >> 62:  # neither present (bit 63) nor swapped (bit 62)
                    continue
                try:
                    mem.seek(start + i * PAGE_BYTES)
                    page = mem.read(PAGE_BYTES)
                except OSError:
                    continue
                if len(page) == PAGE_BYTES:
                    yield page


def _snapshot(proc, name):
    """Stop proc and its descendants, copy their anonymous pages, kill them."""
    pids = process.descendants(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    pages = []
    for pid in pids:
        try:
            pages.extend(anonymous_pages(pid))
        except (OSError, ValueError):
            continue
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    _log(
        f"{name:<7} {len(pages):6d} pages ({len(pages) * PAGE_BYTES / 2**20:.1f} MiB) "
        f"from {len(pids)} process(es)"
    )
    return pages


def _wait_until(pred, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _python_pages(scale):
    proc = subprocess.Popen(
        [sys.executable, "-c", PYTHON_WORKLOAD, str(scale)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    proc.stdout.readline()
    return _snapshot(proc, "python3")


def _sort_pages(workdir, input_bytes):
    rng = random.Random(7)
    words = (
        "GET POST /api/v1/users /static/app.js /index.html 200 404 500 Mozilla/5.0 curl/7.88 "
        "kernel: systemd[1]: Started session error warning eth0 link up down user root cron sshd"
    ).split()
    chunks = []
    written = 0
    t = 1700000000
    while written < input_bytes:
        lines = []
        for _ in range(2000):
            t += rng.randint(0, 3)
            lines.append(
                f"{t} host{rng.randint(0, 40):02d} "
                f"{' '.join(rng.choices(words, k=rng.randint(3, 8)))} "
                f"{rng.getrandbits(32):08x} {rng.randint(1, 254)}.{rng.randint(0, 255)}."
                f"{rng.randint(0, 255)}.{rng.randint(1, 254)} {rng.randint(0, 99999)}\n"
            )
        chunk = "".join(lines).encode()
        chunks.append(chunk)
        written += len(chunk)
    # Feed sort through a pipe left open: it holds all lines in its buffer,
    # waiting for the end of its input, when the snapshot is taken.
    proc = subprocess.Popen(
        ["sort", "-S", "1G", "--parallel=1", "-k3", "-k1n", "-o", os.devnull],
        stdin=subprocess.PIPE,
        env=dict(os.environ, LC_ALL="C"),
    )
    for chunk in chunks:
        proc.stdin.write(chunk)
    proc.stdin.flush()
    del chunks

    def read_all():
        try:
            with open(f"/proc/{proc.pid}/io") as f:
                rchar = int(f.readline().split()[1])
            return rchar >= written
        except (OSError, ValueError, IndexError):
            return True

    _wait_until(read_all, 60)
    time.sleep(0.1)
    pages = _snapshot(proc, "sort")
    proc.stdin.close()
    return pages


def _gcc_pages(workdir, functions, target_bytes):
    rng = random.Random(3)
    path = os.path.join(workdir, "big.c")
    with open(path, "w") as f:
        f.write("#include <string.h>\n#include <stdio.h>\n")
        f.write("struct rec { int id; double v[8]; char name[32]; struct rec *next; };\n")
        for i in range(functions):
            name = "".join(rng.choices("abcdefghij klmnop", k=24))
            f.write(f'static const char *s{i} = "{name}";\n')
            f.write(f"int f{i}(struct rec *r, int n) {{\n  int acc = {rng.randint(0, 999)};\n")
            f.write("  for (int i = 0; i < n; i++) {\n    switch ((r->id + i) % 5) {\n")
            for c in range(5):
                mul, xor = rng.randint(2, 99), rng.randint(0, 9999)
                f.write(
                    f"    case {c}: acc += (int)(r->v[{c}] * {mul}) ^ {xor}; "
                    f"r->v[{(c + 3) % 8}] += acc; break;\n"
                )
            limit = rng.randint(1000, 100000)
            f.write(
                f"    }}\n    if (acc > {limit}) {{ "
                f'snprintf(r->name, sizeof r->name, "%s%d", s{i}, acc); '
                "r = r->next ? r->next : r; }\n  }\n"
            )
            f.write("  return acc + (int)strlen(r->name);\n}\n")
    # cc1 grows while it works through the unit (2500 such functions peak at
    # about 320 MiB after 24 s here): stop it once it holds target_bytes.
    proc = subprocess.Popen(
        ["gcc", "-O2", "-c", path, "-o", os.devnull],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    start = time.monotonic()

    def grown():
        return (
            proc.poll() is not None
            or process.rss_bytes(process.descendants(proc.pid)[1:]) >= target_bytes
        )

    _wait_until(grown, 20)
    if proc.poll() is not None:
        _log("gcc finished before the snapshot (%.1f s)" % (time.monotonic() - start))
        return []
    return _snapshot(proc, "gcc")


def generate(path, size_bytes):
    """Write a corpus of size_bytes to path (and a .json description)."""
    size_bytes -= size_bytes % PAGE_BYTES
    t0 = time.monotonic()
    scale = max(0.05, min(1.0, size_bytes / (256 << 20)))
    workdir = tempfile.mkdtemp(prefix="zramd-corpus-")
    sources = []
    try:
        jobs = [("python3", lambda: _python_pages(scale))]
        if shutil.which("sort"):
            jobs.append(
                ("sort", lambda: _sort_pages(workdir, max(2 << 20, int(size_bytes * 0.25))))
            )
        if shutil.which("gcc"):
            jobs.append(
                (
                    "gcc",
                    lambda: _gcc_pages(
                        workdir, max(300, int(2500 * scale)), min(100 << 20, size_bytes // 3)
                    ),
                )
            )
        for name, job in jobs:
            try:
                pages = job()
            except Exception as e:  # a program that fails just contributes nothing
                _log(f"{name} failed: {e}")
                pages = []
            if pages:
                sources.append((name, pages))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not sources:
        raise RuntimeError("no process memory could be read (need root or ptrace rights)")

    want = size_bytes // PAGE_BYTES
    counts = {name: 0 for name, _ in sources}
    zero = bytes(PAGE_BYTES)
    zero_pages = 0
    written = 0
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        positions = [0] * len(sources)
        while written < want:
            for k, (name, pages) in enumerate(sources):
                take = pages[positions[k] : positions[k] + CHUNK_PAGES]
                positions[k] = (
                    (positions[k] + CHUNK_PAGES) % len(pages) if len(pages) > CHUNK_PAGES else 0
                )
                take = take[: want - written]
                for page in take:
                    f.write(page)
                    zero_pages += page == zero
                counts[name] += len(take)
                written += len(take)
                if written >= want:
                    break
    os.replace(tmp, path)
    unique = sum(len(p) for _, p in sources)
    info = {
        "version": CORPUS_VERSION,
        "size_bytes": size_bytes,
        "pages": want,
        "unique_pages": min(unique, want),
        "repeated": unique < want,
        "zero_pages": zero_pages,
        "pages_by_program": counts,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.monotonic() - t0, 1),
    }
    with open(path + ".json", "w") as f:
        json.dump(info, f, indent=2)
    _log(
        f"wrote {path}: {want} pages ({info['unique_pages']} unique, {zero_pages} zero) "
        f"in {info['seconds']:.1f} s"
    )
    return info


def ensure(directory, size_bytes, regenerate=False):
    """Return (path, info) of a corpus of size_bytes in directory, generating
    it if missing or stale."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"corpus-{size_bytes}.bin")
    if not regenerate and os.path.exists(path) and os.path.exists(path + ".json"):
        try:
            with open(path + ".json") as f:
                info = json.load(f)
            if info.get("version") == CORPUS_VERSION and os.path.getsize(path) == size_bytes:
                _log(f"reusing {path}")
                return path, info
        except (OSError, ValueError):
            pass
    return path, generate(path, size_bytes)
