#!/usr/bin/env python3
"""Daemon benchmark: per-image latency from file close to PUBACK on real mammograms, the same
files and a four-view exam sent by C-STORE (to PUBACK, and to the Mammography CAD SR stored at
dcmtk's storescp playing the PACS), and the 500-file burst (peak RSS, throughput, latency spread);
beside them, measured in the same run, the anchors: pydicom + pylibjpeg full decode and OpenJPEG's
own `opj_decompress` (full and at the reduce level the daemon used) of the same files, and
onnxruntime against tract on the same ONNX files, one thread. Drives the real `mammo-edge run` against
a real mosquitto on a free loopback port; READY=1 comes over an sd_notify socket; latencies come
from the daemon's own state.sqlite (ledger.mtime_ns = file close, outbox.delivered_at = PUBACK).

Usage: scripts/bench_daemon.py --bin BIN --model MODEL [--data DIR] [--burst N] [--scale S]
Prints a Markdown report on stdout."""

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"mosquitto did not open port {port}")


class Daemon:
    """`mammo-edge run` with an sd_notify socket; peak RSS read from /proc before SIGTERM."""

    def __init__(self, bin_, config, root):
        self.sock_path = str(root / f"notify-{time.time_ns()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=self.sock_path, RUST_LOG="info")
        for k in ("WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID"):
            env.pop(k, None)
        self.log = open(root / "daemon.log", "ab")
        self.proc = subprocess.Popen([bin_, "run", "--config", str(config)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        while True:
            msg = self.sock.recv(4096).decode()
            if "READY=1" in msg:
                break

    def rss_kib(self):
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])

    def stop(self):
        peak, now = self.rss_kib()
        self.proc.terminate()
        rc = self.proc.wait(60)
        self.sock.close()
        if rc != 0:
            sys.exit(f"daemon exited with {rc}")
        return peak, now


def delivered(db, n):
    """(file name, latency ms, image timings) of delivered image messages, oldest first."""
    con = sqlite3.connect(db)
    rows = con.execute(
        """SELECT l.path, o.delivered_at - l.mtime_ns / 1000000, o.payload
           FROM outbox o JOIN ledger l
             ON l.sop_instance_uid = json_extract(o.payload, '$.sop_instance_uid')
           WHERE o.topic LIKE '%/image' AND o.delivered_at IS NOT NULL
           ORDER BY o.id""").fetchall()
    con.close()
    return rows if len(rows) >= n else None


def wait_delivered(db, n, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if db.exists():
            try:
                rows = delivered(db, n)
            except sqlite3.OperationalError:
                rows = None
            if rows:
                return rows
        time.sleep(0.1)
    sys.exit(f"only part of {n} images delivered within {timeout} s")


def wait_sr(db, n, timeout):
    """Unix ms at which the n-th SR was delivered (sr_outbox.delivered_at)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            con = sqlite3.connect(db)
            rows = con.execute("SELECT delivered_at FROM sr_outbox WHERE delivered_at IS NOT NULL "
                               "ORDER BY id").fetchall()
            con.close()
            if len(rows) >= n:
                return rows[n - 1][0]
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    sys.exit(f"SR {n} not delivered within {timeout} s")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def median_ms(fn, runs=3):
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(t)


def anchors(a, reals, ours):
    """Decode anchors on the same files: pydicom + pylibjpeg (full), opj_decompress full and at
    the reduce level our decoder used (from the decoded size `inspect` cannot see: the level is
    the one that keeps four times the model input, recomputed here from Rows/Columns)."""
    try:
        import pydicom
        from pydicom.encaps import generate_frames
    except ImportError:
        print("(pydicom not installed: no decode anchors)\n")
        return
    opj = shutil.which("opj_decompress")
    print("## Decode anchors, same files, same run\n")
    print("| file | ours ms (daemon) | pydicom + pylibjpeg full ms | ratio | "
          "opj_decompress full ms | opj_decompress at our level ms | level |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tmp = Path(tempfile.mkdtemp(prefix="bench-anchor-"))
    for f in reals:
        ds = pydicom.dcmread(f)
        py = median_ms(lambda: pydicom.dcmread(f).pixel_array)
        full = red = "–"
        level = 0
        if ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
            # four times the 256 x 160 input, as PreprocessConfig::decode_at_least
            while ((ds.Rows + (1 << (level + 1)) - 1) >> (level + 1)) >= 4 * 256 and \
                    ((ds.Columns + (1 << (level + 1)) - 1) >> (level + 1)) >= 4 * 160:
                level += 1
            if opj:
                cs = next(generate_frames(ds.PixelData, number_of_frames=1))
                start = cs.find(b"\xff\x4f\xff\x51")
                j2k = tmp / (f.stem + ".j2k")
                j2k.write_bytes(cs[start:])
                out = tmp / "out.pgm"
                run = lambda r: subprocess.run([opj, "-i", str(j2k), "-o", str(out), "-r", str(r)],
                                               capture_output=True, check=True)
                full = f"{median_ms(lambda: run(0)):.0f}"
                red = f"{median_ms(lambda: run(level)):.0f}"
        o = ours.get(f.name, 0)
        print(f"| {f.name} | {o:.0f} | {py:.0f} | {py / max(o, 1e-3):.1f}× faster | {full} | {red} | "
              f"{level or '–'} |")
    shutil.rmtree(tmp, ignore_errors=True)
    print("\nopj_decompress times include starting the process and writing the PGM.\n")
    models = [m for m in (a.model, str(Path(a.model).with_name(
        Path(a.model).name.replace(".int8.onnx", ".onnx")))) if Path(m).is_file()]
    models = sorted(set(models), key=lambda m: ".int8" in m)
    print("## Inference: tract against onnxruntime, same files, one thread, same run\n")
    tr = subprocess.run([a.bin, "bench", "--runs", "200", *models], capture_output=True, text=True)
    ort = subprocess.run([sys.executable, "scripts/bench_ort.py", "--runs", "200", *models],
                         capture_output=True, text=True)
    def medians(md):
        out = {}
        for line in md.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) > 3 and cells[0].endswith(".onnx"):
                # tract: | model | weights | input | median | ...; ort: | model | median | ...
                v = cells[3] if len(cells) > 6 else cells[1]
                try:
                    out[cells[0]] = float(v)
                except ValueError:
                    pass
        return out
    t, o = medians(tr.stdout), medians(ort.stdout)
    print("| model | tract median ms | onnxruntime median ms | tract / onnxruntime |")
    print("|---|---:|---:|---:|")
    for m in t:
        if m in o:
            print(f"| {m} | {t[m]:.2f} | {o[m]:.2f} | {t[m] / o[m]:.2f}× |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.environ.get("MAMMO_TEST_DATA", ""))
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    port = free_port()
    (root / "mosq").mkdir()
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    mosq = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)

    def config(name, extra=""):
        watch, state = root / name / "export", root / name / "state"
        watch.mkdir(parents=True)
        c = root / name / "config.toml"
        c.write_text(
            f'[watch]\ndirs = ["{watch}"]\nstable_secs = 1\nrescan_secs = 5\n'
            f'[state]\ndir = "{state}"\n[model]\npath = "{a.model}"\nthreads = {a.threads}\n'
            f'[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\ntopic_prefix = "bench/{name}"\n'
            f'client_id = "bench-{name}"\n[exam]\nquiet_secs = 5\n{extra}')
        return c, watch, state / "state.sqlite"

    print("# Daemon benchmark\n")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} cores, {cpu}; {time.strftime('%Y-%m-%d')}. "
          f"Release build, model `{Path(a.model).name}`, {a.threads} inference thread(s), "
          "mosquitto on loopback. Latency = PUBACK time (outbox.delivered_at) minus the file's "
          "mtime (its close by the exporter), both from the daemon's state.sqlite; files are "
          "copied in under a temporary name and renamed (moved-to: complete at once with the "
          "default `watch.settle = \"events\"`, no stability wait). JPEG 2000 decoded at reduced "
          "resolution (`ingest.reduced_decode`, default).\n")
    version = subprocess.run([a.bin, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"Binary: `{version}`\n")

    # 1. real mammograms, one at a time
    reals = sorted(Path(a.data, "real-mammo").glob("*.dcm")) if a.data else []
    if reals:
        c, watch, db = config("real")
        d = Daemon(a.bin, c, root / "real")
        print("## Real mammograms, one at a time\n")
        print("| file | matrix | latency ms (close → PUBACK) | decode ms | preprocess ms | inference ms |")
        print("|---|---|---:|---:|---:|---:|")
        lat, decode_ms = [], {}
        for i, f in enumerate(reals):
            shutil.copy(f, watch / f"{i}.part")
            os.rename(watch / f"{i}.part", watch / f"{i}.dcm")
            rows = wait_delivered(db, i + 1, 300)
            _, ms, payload = rows[i]
            t = json.loads(payload).get("timings_ms", {})
            hdr = subprocess.run([a.bin, "inspect", "--json", str(f)], capture_output=True,
                                 text=True)
            m = json.loads(hdr.stdout) if hdr.returncode == 0 else {}
            lat.append(ms)
            decode_ms[f.name] = t.get("decode", 0)
            print(f"| {f.name} | {m.get('columns', '?')}×{m.get('rows', '?')} | {ms:.0f} | "
                  f"{t.get('decode', 0):.0f} | {t.get('preprocess', 0):.0f} | "
                  f"{t.get('inference', 0):.0f} |")
        peak, _ = d.stop()
        chosen = [l for l in (root / "real" / "daemon.log").read_text(errors="replace").splitlines()
                  if "model precision:" in l]
        print(f"\nMedian latency over {len(lat)} real mammograms: **{statistics.median(lat):.0f} ms**; "
              f"peak RSS of the daemon (VmHWM, whole run of the four files): {peak / 1024:.0f} MiB.\n")
        if chosen:
            print("Model file scored with (`model.precision = \"auto\"`): "
                  + chosen[-1].split("model precision:", 1)[1].strip() + "\n")
        anchors(a, reals, decode_ms)

    # 1b. the same files sent by storescu to the C-STORE receiver (no settle wait), each
    # exam's Mammography CAD SR sent back to dcmtk's storescp playing the PACS
    if reals and shutil.which("storescu"):
        scp_port, pacs_port = free_port(), free_port()
        (root / "pacs").mkdir()
        pacs = subprocess.Popen(["storescp", "-aet", "PACS", "+xa", "-od", str(root / "pacs"),
                                 str(pacs_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_port(pacs_port)
        c, _, db = config("net", f'[dicom]\nlisten = "127.0.0.1:{scp_port}"\n'
                          'calling_ae_allow = ["BENCH"]\nip_allow = ["127.0.0.1"]\n'
                          f'[[sr.destination]]\nae_title = "PACS"\n'
                          f'address = "127.0.0.1:{pacs_port}"\n')
        d = Daemon(a.bin, c, root / "net")
        print("## Real mammograms sent by C-STORE (storescu), one at a time\n")
        print("Each file is its own exam here, incomplete (one view), so its exam and SR wait "
              "`exam.quiet_secs = 5` before publication (the exam rule); the four-view exam "
              "below has no such wait.\n")
        print("| file | transfer syntax | C-STORE answered ms | latency ms (storescu start → PUBACK) "
              "| storescu start → SR stored at the PACS ms |")
        print("|---|---|---:|---:|---:|")
        lat, sr_lat = [], []
        for i, f in enumerate(reals):
            ts = subprocess.run(["dcmdump", "-M", "+P", "0002,0010", str(f)], capture_output=True,
                                text=True).stdout.split("=", 1)[-1].split()[0]
            propose = {"JPEGLossless:Non-hierarchical-1stOrderPrediction": ["-xs"],
                       "JPEG2000LosslessOnly": ["-xv"], "JPEG2000": ["-xw"],
                       "JPEGLSLossless": ["-xt"]}.get(ts, [])
            t_send = time.time()
            r = subprocess.run(["storescu", *propose, "-aet", "BENCH", "-aec", "MAMMO_EDGE",
                                "127.0.0.1", str(scp_port), str(f)], capture_output=True, text=True)
            answered = (time.time() - t_send) * 1000
            if r.returncode != 0:
                sys.exit(f"storescu failed on {f.name}: {r.stdout}{r.stderr}")
            wait_delivered(db, i + 1, 300)
            con = sqlite3.connect(db)
            (puback,) = con.execute("SELECT MAX(delivered_at) FROM outbox WHERE topic LIKE '%/image'").fetchone()
            con.close()
            ms = puback - t_send * 1000
            lat.append(ms)
            sr_ms = wait_sr(db, i + 1, 120) - t_send * 1000
            sr_lat.append(sr_ms)
            print(f"| {f.name} | {ts} | {answered:.0f} | {ms:.0f} | {sr_ms:.0f} |")
        print(f"\nMedian latency over {len(lat)} real mammograms received by C-STORE: "
              f"**{statistics.median(lat):.0f} ms** to the image's PUBACK (it includes sending "
              "the file); "
              f"{statistics.median(sr_lat):.0f} ms to the SR at the PACS (with the 5 s quiet "
              "period of an incomplete exam).\n")

        # 1c. a complete four-view exam (phantoms, scale 0.25) in one association
        src = root / "exam-src"
        subprocess.run([a.bin, "synth", "--out", str(src), "--count", "4", "--seed", "91",
                        "--scale", str(a.scale)], check=True, stdout=subprocess.DEVNULL)
        four = [str(f) for f in sorted(src.rglob("*.dcm"))]
        t_send = time.time()
        r = subprocess.run(["storescu", "-aet", "BENCH", "-aec", "MAMMO_EDGE", "127.0.0.1",
                            str(scp_port), *four], capture_output=True, text=True)
        answered = (time.time() - t_send) * 1000
        if r.returncode != 0:
            sys.exit(f"storescu failed on the four-view exam: {r.stdout}{r.stderr}")
        sr_at = wait_sr(db, len(reals) + 1, 120)
        con = sqlite3.connect(db)
        (exam_at,) = con.execute("SELECT MAX(delivered_at) FROM outbox WHERE topic LIKE '%/exam'").fetchone()
        con.close()
        d.stop()
        pacs.terminate()
        pacs.wait()
        print("## A four-view exam sent by C-STORE in one association\n")
        print(f"4 phantoms (scale {a.scale}), complete, so the exam is published when its fourth "
              "image is scored.\n")
        print("| C-STORE of 4 answered ms | storescu start → exam PUBACK ms | storescu start → SR stored at the PACS ms |")
        print("|---:|---:|---:|")
        print(f"| {answered:.0f} | {exam_at - t_send * 1000:.0f} | {sr_at - t_send * 1000:.0f} |\n")

    # 2. burst: N phantoms copied in at once
    if a.burst > 0:
        src = root / "burst-src"
        subprocess.run([a.bin, "synth", "--out", str(src), "--count", str(a.burst), "--seed", "77",
                        "--scale", str(a.scale)], check=True, stdout=subprocess.DEVNULL)
        files = sorted(src.rglob("*.dcm"))
        c, watch, db = config("burst")
        d = Daemon(a.bin, c, root / "burst")
        _, rss0 = d.rss_kib()
        t0 = time.time()
        for i, f in enumerate(files):
            shutil.copy(f, watch / f"b{i:05}.dcm")
        t_copied = time.time() - t0
        peak_seen = 0
        while True:
            peak_seen = max(peak_seen, d.rss_kib()[1])
            try:
                rows = delivered(db, len(files)) if db.exists() else None
            except sqlite3.OperationalError:
                rows = None
            if rows:
                break
            if time.time() - t0 > 3600:
                sys.exit("burst not delivered within an hour")
            time.sleep(0.2)
        wall = time.time() - t0
        peak, _ = d.stop()
        lat = [r[1] for r in rows]
        sizes = sum(f.stat().st_size for f in files) / 2**20
        print(f"## Burst: {len(files)} phantoms (scale {a.scale}, {sizes:.0f} MiB) copied in at once\n")
        print("| files | copy s | all delivered s | images/s | latency p50 / p90 / max s | RSS idle MiB | peak RSS MiB |")
        print("|---:|---:|---:|---:|---|---:|---:|")
        print(f"| {len(files)} | {t_copied:.1f} | {wall:.1f} | {len(files) / wall:.1f} | "
              f"{pct(lat, .5) / 1000:.1f} / {pct(lat, .9) / 1000:.1f} / {max(lat) / 1000:.1f} | "
              f"{rss0 / 1024:.0f} | {peak / 1024:.0f} |")
        print("\nLatency in a burst is mostly queueing: files are scored one after another.\n")

    mosq.terminate()
    mosq.wait()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
