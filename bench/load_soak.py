"""The soak of bench/load.py: a working day compressed into minutes, then a check that nothing was lost.

Several people at once: some prompt, one annotator saves revisions and uploads new
slices, and a fine-tune runs on annotations the admin approved. Afterwards every
revision saved is downloaded and compared with the mask it was saved from, and every
blob is read back through the store's verifying reader. A lost revision or a bad blob
is the failure this exists to find; errors are counted by route and status.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import numpy as np

from loadutil import BOX, SMALL, Api, Memory, Tally, errors_text, jitter, small_png, verify_blobs

SMALL_BOX = [SMALL // 5, SMALL // 5, SMALL * 4 // 5, SMALL * 4 // 5]
FINETUNE = {"mode": "decoder", "epochs": 1}


class Soak:
    def __init__(self, admin: Api, annotator: Api, ctx: dict, seconds: float):
        self.admin, self.annotator, self.ctx, self.label = admin, annotator, ctx, ctx["label"]
        self.tallies = {
            kind: Tally() for kind in ("prompt", "first prompt", "save", "read", "upload", "review", "finetune")
        }
        self.saved: list[tuple[int, int, int, int, int]] = []  # annotation, revision, area, height, width
        self.revision: dict[int, int] = {}  # image id -> the revision our next save builds on
        self.pool = [(ctx["iid"], ctx["width"], ctx["height"], BOX)]  # images the saver cycles through
        self.lock = threading.Lock()
        self.seed = time.time_ns() % 1_000_000_000  # new pixels on every run, even against a reused server
        self.stop_at = time.monotonic() + seconds
        self.job: dict | None = None
        self.note = ""

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    def next_seed(self) -> int:
        with self.lock:
            self.seed += 1
            return self.seed

    def upload(self, api: Api) -> tuple | None:
        seed = self.next_seed()
        r = self.tallies["upload"].timed(
            api,
            "POST",
            f"/projects/{self.ctx['pid']}/images",
            "upload",
            files={"file": (f"soak-{seed}.png", small_png(seed), "image/png")},
        )
        if r is None:
            return None
        image = r.json()
        return image["id"], image["width"], image["height"], SMALL_BOX

    def save(
        self, api: Api, image: tuple, rng: np.random.Generator, submit: bool = False, fresh: bool = False
    ) -> int | None:
        """Prompt (on a `fresh` upload that waits for its encode), then save that mask on top of the
        revision we last saw; returns the annotation id."""
        iid, w, h, box = image
        r = self.tallies["first prompt" if fresh else "prompt"].timed(
            api, "POST", f"/images/{iid}/segment", "segment", json={"boxes": [jitter(box, rng, w, h)]}
        )
        if r is None:
            return None
        proposal = r.json()
        if iid not in self.revision:  # a reused project may already hold revisions of this image
            r = self.tallies["read"].timed(api, "GET", f"/images/{iid}", "image")
            if r is None:
                return None
            self.revision[iid] = r.json()["annotations"].get(self.label, {}).get("revision", 0)
        r = self.tallies["save"].timed(
            api,
            "PUT",
            f"/images/{iid}/annotations/{self.label}",
            "save",
            json={
                "mask_id": proposal["mask_id"],
                "base_revision": self.revision[iid],
                "status": "submitted" if submit else "draft",
            },
        )
        if r is None:
            self.revision.pop(iid, None)  # re-read it before the next try
            return None
        out = r.json()
        self.revision[iid] = out["revision"]
        with self.lock:
            self.saved.append((out["annotation_id"], out["revision"], proposal["area"], h, w))
        return out["annotation_id"]

    # -- the people ------------------------------------------------------------

    def prompter(self, n: int) -> None:
        api, rng = self.admin.twin(), np.random.default_rng(1000 + n)
        path, w, h = f"/images/{self.ctx['iid']}/segment", self.ctx["width"], self.ctx["height"]
        while self.running():
            self.tallies["prompt"].timed(api, "POST", path, "segment", json={"boxes": [jitter(BOX, rng, w, h)]})
        api.close()

    def saver(self) -> None:
        api, rng, k = self.annotator.twin(), np.random.default_rng(7), 0
        while self.running():
            with self.lock:
                image = self.pool[k % len(self.pool)]
            self.save(api, image, rng)
            k += 1
            time.sleep(0.2)
        api.close()

    def uploader(self, every: float) -> None:
        api, rng = self.annotator.twin(), np.random.default_rng(11)
        while self.running():
            image = self.upload(api)
            if image is not None:  # a first prompt: the worker's encode, as when someone opens it
                r = self.tallies["first prompt"].timed(
                    api,
                    "POST",
                    f"/images/{image[0]}/segment",
                    "segment",
                    json={"boxes": [jitter(image[3], rng, image[1], image[2])]},
                )
                if r is not None:
                    with self.lock:
                        self.pool.append(image)
            time.sleep(every)
        api.close()

    def finetuner(self, images: int) -> None:
        """Fresh images labelled and submitted by the annotator, approved by the admin, then one job."""
        api, rng = self.annotator.twin(), np.random.default_rng(13)
        try:
            for _ in range(images):
                image = self.upload(api)
                aid = None if image is None else self.save(api, image, rng, submit=True, fresh=True)
                if aid is None:
                    self.note = "fine-tune not started: an image for it could not be uploaded or labelled"
                    return
                if (
                    self.tallies["review"].timed(
                        self.admin, "POST", f"/annotations/{aid}/review", "approve", json={"decision": "approve"}
                    )
                    is None
                ):
                    self.note = "fine-tune not started: the approval was refused"
                    return
        finally:
            api.close()
        r = self.tallies["finetune"].timed(
            self.admin, "POST", f"/projects/{self.ctx['pid']}/training-jobs", "start", json=FINETUNE
        )
        if r is None:
            self.note = "fine-tune refused (see errors)"
            return
        self.job = r.json()
        self.job["submitted_at"] = time.monotonic()

    def wait_job(self, timeout: float) -> None:
        if self.job is None:
            return
        deadline = time.monotonic() + timeout
        while self.job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(2)
            r = self.tallies["finetune"].timed(self.admin, "GET", f"/training-jobs/{self.job['id']}", "poll")
            if r is not None:
                self.job = {**r.json(), "submitted_at": self.job["submitted_at"]}
        self.job["waited_s"] = round(time.monotonic() - self.job["submitted_at"], 1)

    # -- the checks ------------------------------------------------------------

    def lost_revisions(self) -> list[str]:
        """Each saved revision must come back with exactly the mask it was saved from."""
        lost = []
        for aid, number, area, h, w in self.saved:
            r = self.admin.client.get(f"/annotations/{aid}/revisions/{number}.npy")
            if r.status_code != 200:
                lost.append(f"annotation {aid} revision {number}: HTTP {r.status_code} {r.text[:100]}")
                continue
            mask = np.load(io.BytesIO(r.content), allow_pickle=False)
            if mask.shape != (h, w) or int(np.count_nonzero(mask)) != area:
                lost.append(
                    f"annotation {aid} revision {number}: {mask.shape}, {np.count_nonzero(mask)} pixels "
                    f"set; saved {(h, w)}, {area}"
                )
        return lost


def soak(
    admin: Api,
    annotator_login: tuple[str, str] | None,
    ctx: dict,
    args,
    web_pid: int | None,
    storage_url: str | None,
    train_images: int,
) -> dict:
    annotator = Api(admin.url, *annotator_login) if annotator_login else admin
    if annotator is not admin:
        admin.ok("POST", f"/projects/{ctx['pid']}/members", json={"username": annotator_login[0]})
    run = Soak(admin, annotator, ctx, args.minutes * 60)
    people = [threading.Thread(target=run.prompter, args=(n,)) for n in range(args.soak_clients)]
    people += [threading.Thread(target=run.saver), threading.Thread(target=run.uploader, args=(args.upload_every,))]
    if annotator is not admin:
        people.append(threading.Thread(target=run.finetuner, args=(train_images,)))
    else:
        run.note = "fine-tune skipped: give --annotator (nobody approves their own annotation)"
    with Memory(web_pid) as mem:
        for t in people:
            t.start()
        for t in people:
            t.join()
        for tally in run.tallies.values():
            tally.stop()
    run.wait_job(args.job_wait)
    mem.settle(args.settle)
    lost = run.lost_revisions()
    blobs, bad = verify_blobs(storage_url) if storage_url else (None, [])
    return report(run, args.minutes, mem, lost, blobs, bad)


def report(run: Soak, minutes: float, mem: Memory, lost: list[str], blobs: int | None, bad: list[str]) -> dict:
    sums = {kind: t.summary() for kind, t in run.tallies.items()}
    errors = Counter()
    for s in sums.values():
        errors.update(s["errors_by_kind"])
    p, f, s = sums["prompt"], sums["first prompt"], sums["save"]
    print(
        f"soak {minutes:g} min: {p['requests']} cached prompts (p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms), "
        f"{f['requests']} first prompts on new uploads (encode included; p50 {f['p50_ms']:.0f} ms), "
        f"{s['requests']} saves (p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms), "
        f"{sums['upload']['requests']} uploads, {sums['review']['requests']} approvals; errors "
        + (", ".join(f"{k} x{n}" for k, n in errors.items()) or "0")
    )
    for kind, summary in sums.items():
        if summary["errors"]:
            print(f"  {kind} errors: {errors_text(summary)}")
    job = run.job
    if job is None:
        print(f"  {run.note}")
    else:
        print(
            f"  fine-tune job {job['id']} ({FINETUNE}): {job['state']} after {job['waited_s']} s"
            + (f": {job['error']}" if job.get("error") else "")
            + (f"; {job['result'].get('note') or job['result']}" if job.get("result") else "")
        )
    print(
        f"  revisions saved during the soak: {len(run.saved)}; downloadable with the same mask: "
        f"{len(run.saved) - len(lost)}; lost: {len(lost)}"
    )
    for line in lost[:10]:
        print(f"    {line}")
    if blobs is None:
        print("  blobs: not verified (the blob store is only reachable with --start or --storage-url)")
    else:
        print(f"  blobs: {blobs} read back, {blobs - len(bad)} verify, {len(bad)} bad")
        for line in bad[:10]:
            print(f"    {line}")
    print("  " + mem.line(), flush=True)
    job_ok = job is None or job["state"] != "failed"
    return {
        "minutes": minutes,
        "calls": sums,
        "errors": dict(errors),
        "finetune": job,
        "note": run.note,
        "revisions_saved": len(run.saved),
        "revisions_lost": lost,
        "blobs": blobs,
        "bad_blobs": bad,
        "rss": mem.as_dict(),
        "ok": not errors and not lost and not bad and job_ok,
    }
