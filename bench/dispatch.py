"""Dispatch latency of Gantry and of Ray Jobs, for bench/dispatch.sh (standard library only).

    dispatch.py dataset DIR                    two classes of four 16x16 PNGs
    dispatch.py gantry URL TOKEN N POLL OUT    N tiny jobs through POST /admin/api/train
    dispatch.py ray URL N POLL OUT             N trivial jobs through Ray's Jobs API
    dispatch.py table GANTRY_OUT RAY_OUT       the table, then one ROW line per figure

Jobs go one at a time, so every figure is the latency of one job on an idle system, never time
spent queued behind another. Gantry's jobs alternate between two ways of watching them:
- followed: right after the submission the client opens the job's event stream
  (`GET /admin/api/jobs/{id}/events`, server-sent events) and notes when its `started` and its
  `completed` event arrive: the time a client that waits on the job sees its node start it;
- polled: its status is read every POLL seconds until it is `running` (or over) and then until it
  is over, as Ray's jobs are (Ray's job API has no event stream to follow): the figure then holds
  up to POLL plus one read of waiting, besides the registry applying the node's event.
OUT gets one line per job: `<followed|polled>\t<submit→started s>\t<submit→completed s>`.
"""

import http.client
import json
import struct
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlsplit

WARMUP = 3


def png(rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * 16 for _ in range(16))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def dataset(out):
    for c, name in enumerate(["dark", "light"]):
        d = Path(out) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            v = 40 * i + (150 if c else 0)
            (d / f"{i}.png").write_bytes(png((v % 256, (v * 3) % 256, 90)))


def call(method, url, token=None, body=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def follow(submit, status, poll, running, final, timeout=120.0):
    """Submit, then poll; returns (started, completed) in seconds after the submission."""
    t0 = time.monotonic()
    handle = submit()
    started = None
    while True:
        s = status(handle)
        now = time.monotonic() - t0
        if started is None and (s in running or s in final):
            started = now
        if s in final:
            if s not in ("completed", "SUCCEEDED"):
                raise SystemExit(f"job {handle} ended {s}")
            return started, now
        if now > timeout:
            raise SystemExit(f"job {handle} still {s} after {timeout:.0f} s")
        time.sleep(poll)


def follow_events(url, token, submit, timeout=120.0):
    """Submit, then read the job's event stream; returns (started, completed) in seconds after
    the submission, each when its event arrived."""
    t0 = time.monotonic()
    job_id = submit()
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", f"/admin/api/jobs/{job_id}/events",
                     headers={"authorization": f"Bearer {token}",
                              "accept": "text/event-stream"})
        r = conn.getresponse()
        if r.status != 200:
            raise SystemExit(f"job {job_id}: events answered {r.status}: {r.read()[:200]!r}")
        started = None
        while True:
            line = r.readline()
            if not line:
                raise SystemExit(f"job {job_id}: its event stream ended before the job did")
            if not line.startswith(b"event:"):
                continue
            kind = line[len(b"event:"):].strip().decode()
            now = time.monotonic() - t0
            if kind == "started" and started is None:
                started = now
            elif kind == "completed":
                return started if started is not None else now, now
            elif kind in ("failed", "cancelled"):
                raise SystemExit(f"job {job_id} ended {kind}")
    finally:
        conn.close()


def gantry(url, token, n, poll, out):
    job = {"output_model": "tiny", "train_path": "/tiny", "epochs": 1, "batch_size": 4,
           "image_size": 16, "validation_split": 0.25, "driver": "any", "wait": False}
    submit = lambda: call("POST", f"{url}/admin/api/train", token, job)["job_id"]
    status = lambda i: call("GET", f"{url}/admin/api/jobs/{i}", token)["status"]
    polled = lambda: follow(submit, status, poll, {"running"},
                            {"completed", "failed", "cancelled"})
    followed = lambda: follow_events(url, token, submit)
    # Interleaved, so both ways see the same machine at the same moments.
    modes = ["followed", "polled"]
    run(lambda i: (modes[i % 2], (followed, polled)[i % 2]()), n, out)


def ray(url, n, poll, out):
    entrypoint = "python -c 'pass'"
    submit = lambda: call("POST", f"{url}/api/jobs/", body={"entrypoint": entrypoint})["submission_id"]
    status = lambda i: call("GET", f"{url}/api/jobs/{i}")["status"]
    one = lambda: follow(submit, status, poll, {"RUNNING"}, {"SUCCEEDED", "FAILED", "STOPPED"})
    run(lambda i: ("polled", one()), n, out)


def run(one, n, out):
    for i in range(WARMUP * 2):
        one(i)
    t = time.monotonic()
    with open(out, "w") as f:
        for i in range(n):
            mode, (started, completed) = one(i)
            f.write(f"{mode}\t{started:.6f}\t{completed:.6f}\n")
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{n} jobs ({time.monotonic() - t:.0f} s)", file=sys.stderr)


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def table(gantry_out, ray_out):
    def load(path):
        rows = {}
        for line in open(path):
            if line.strip():
                mode, started, completed = line.rstrip("\n").split("\t")
                rows.setdefault(mode, ([], []))
                rows[mode][0].append(float(started))
                rows[mode][1].append(float(completed))
        return rows

    g, r = load(gantry_out), load(ray_out)
    r_started, r_done = r["polled"]
    figures = []
    for prefix, mode, started_name in [("", "followed", "started"),
                                       ("polled_", "polled", "running")]:
        g_started, g_done = g[mode]
        for name, gs, rs in [(f"submit_to_{started_name}", g_started, r_started),
                             ("submit_to_completed", g_done, r_done)]:
            for p in (50, 99):
                figures.append((f"{prefix}{name}_p{p}_ms", pct(gs, p) * 1000, pct(rs, p) * 1000))
    print(f"jobs: Gantry {len(g['followed'][0])} followed by their event stream and "
          f"{len(g['polled'][0])} polled, interleaved; Ray {len(r_started)} polled (Ray's started "
          "= RUNNING, completed = SUCCEEDED)")
    print(f"{'figure':<34}{'Gantry':>12}{'Ray':>12}{'Ray/Gantry':>12}")
    for name, gv, rv in figures:
        print(f"{name:<34}{gv:>12.1f}{rv:>12.1f}{rv / gv:>11.1f}x")
    for name, gv, rv in figures:
        print(f"ROW\t{name}\t{gv:.1f}\t{rv:.1f}\t{rv / gv:.1f}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dataset":
        dataset(args[0])
    elif cmd == "gantry":
        gantry(args[0], args[1], int(args[2]), float(args[3]), args[4])
    elif cmd == "ray":
        ray(args[0], int(args[1]), float(args[2]), args[3])
    elif cmd == "table":
        table(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {cmd}")
