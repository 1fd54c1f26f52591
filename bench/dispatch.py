"""Dispatch latency of Gantry and of Ray Jobs, for bench/dispatch.sh (standard library only).

    dispatch.py dataset DIR                    two classes of four 16x16 PNGs
    dispatch.py gantry URL TOKEN N POLL OUT    N tiny jobs through POST /admin/api/train
    dispatch.py ray URL N POLL OUT             N trivial jobs through Ray's Jobs API
    dispatch.py table GANTRY_OUT RAY_OUT       the table, then one ROW line per figure

Jobs go one at a time: each is submitted, then its status is polled every POLL seconds until it
is running (or over) and then until it is over, so every figure is the latency of one job on an
idle system, never time spent queued behind another. OUT gets one line per job:
`<submit→started seconds>\t<submit→completed seconds>`.
"""

import json
import struct
import sys
import time
import urllib.request
import zlib
from pathlib import Path

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


def gantry(url, token, n, poll, out):
    job = {"output_model": "tiny", "train_path": "/tiny", "epochs": 1, "batch_size": 4,
           "image_size": 16, "validation_split": 0.25, "driver": "any", "wait": False}
    submit = lambda: call("POST", f"{url}/admin/api/train", token, job)["job_id"]
    status = lambda i: call("GET", f"{url}/admin/api/jobs/{i}", token)["status"]
    run(lambda: follow(submit, status, poll, {"running"},
                       {"completed", "failed", "cancelled"}), n, out)


def ray(url, n, poll, out):
    entrypoint = "python -c 'pass'"
    submit = lambda: call("POST", f"{url}/api/jobs/", body={"entrypoint": entrypoint})["submission_id"]
    status = lambda i: call("GET", f"{url}/api/jobs/{i}")["status"]
    run(lambda: follow(submit, status, poll, {"RUNNING"}, {"SUCCEEDED", "FAILED", "STOPPED"}),
        n, out)


def run(one, n, out):
    for _ in range(WARMUP):
        one()
    t = time.monotonic()
    with open(out, "w") as f:
        for i in range(n):
            started, completed = one()
            f.write(f"{started:.6f}\t{completed:.6f}\n")
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{n} jobs ({time.monotonic() - t:.0f} s)", file=sys.stderr)


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def table(gantry_out, ray_out):
    def load(path):
        rows = [tuple(map(float, l.split("\t"))) for l in open(path) if l.strip()]
        return [r[0] for r in rows], [r[1] for r in rows], len(rows)

    g_started, g_done, g_n = load(gantry_out)
    r_started, r_done, r_n = load(ray_out)
    figures = []
    for name, g, r in [("submit_to_started", g_started, r_started),
                       ("submit_to_completed", g_done, r_done)]:
        for p in (50, 99):
            figures.append((f"{name}_p{p}_ms", pct(g, p) * 1000, pct(r, p) * 1000))
    print(f"jobs: Gantry {g_n}, Ray {r_n} (one at a time; Ray's started = RUNNING, "
          "completed = SUCCEEDED)")
    print(f"{'figure':<28}{'Gantry':>12}{'Ray':>12}{'Ray/Gantry':>12}")
    for name, g, r in figures:
        print(f"{name:<28}{g:>12.1f}{r:>12.1f}{r / g:>11.1f}x")
    for name, g, r in figures:
        print(f"ROW\t{name}\t{g:.1f}\t{r:.1f}\t{r / g:.1f}")


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
