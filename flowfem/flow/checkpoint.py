"""Checkpoints of a flow run: written atomically, verified when read, and belonging to one run.

A run started afresh gets a run id, ``run-YYYYMMDD-HHMMSS-UUUUUU`` (its UTC
start time, so ids sort by start); a resumed run keeps the id of the
checkpoint it resumes from. Its checkpoints are ``RUN.step-00000012.npz``.
Rotation removes only the current run's older files, and a directory
resolves to the newest checkpoint of the run that started last, so a new
run in the same directory (``flowfem flow --force``) neither deletes nor
resumes another run's checkpoints.

A file holds the dof coordinates ``theta`` and values ``u`` of U in a
rank-count independent order (sorted by coordinates), the scheme's earlier
states ``history`` (m, ndofs) in the same order (multistep schemes: their
times are in the manifest), a JSON ``manifest`` (format version, run id,
step, t, next tau, the error tolerance ts_atol, the number of ranks, the
problem's fingerprint, the energy log) and the sha256 of all of it. An
m-output flow stores ``u`` (ndofs, m) and ``history`` (k, ndofs, m), one
column per output (as density.npz), and its fingerprint records ``outputs``.
:func:`load_checkpoint` restores U and the history value for value, so a
resumed run on the same number of ranks repeats the uninterrupted one bit
for bit.

A run that writes a trajectory saves, just before each checkpoint, the
frames written since its previous one as ``RUN.frames-00000012.npz``
(:meth:`flowfem.io.TrajectoryWriter.take`: ``start``, the step before its
first frame, and the frames' steps, times and values by dof coordinates
``theta``). These files are not rotated: :func:`saved_frames` follows them
back from the resumed step through each file's ``start`` to step 0, so a
resumed run's trajectory holds every frame up to the checkpoint once, and
none of those a crashed run wrote after it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from flowfem.mpi import CollectiveError, on_root  # first: loads MPI before dolfinx

from mpi4py import MPI  # noqa: E402
from flowfem.petsc import PETSc  # noqa: E402

from flowfem.flow.driver import Flow, FlowState, blocks  # noqa: E402
from flowfem.io import fill_by_coordinates, function, gather_dofs, jsonable, vector  # noqa: E402

VERSION = 2
_NAME = re.compile(r"^(run-\d{8}-\d{6}-\d{6})\.step-(\d{8})\.npz$")
_FRAMES = "{run}.frames-{step:08d}.npz"


class CheckpointError(CollectiveError):
    """A checkpoint that cannot be resumed from (missing, partial, corrupt or for another problem)."""


def fingerprint(flow: Flow, **extra) -> dict:
    """What must agree between a checkpoint and the run resuming from it (``extra``: more settings)."""
    E, H = flow.E, flow.E.H
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(E.Phi.x).tobytes())
    digest.update(np.ascontiguousarray(E.y).tobytes())
    fp = dict(ndofs=H.ndofs, cells=H.space.num_cells, domain=H.space.domain, degree=H.degree,
              weight=str(H.weight), kappa=H.kappa, alpha=E.alpha, loss=E.loss.name,
              activation=E.Phi.sigma.name, quadrature_degree=E.Phi.quadrature.degree, n=E.n,
              data_sha256=digest.hexdigest(), metric=flow.metric, scheme=flow.scheme.label, adapt=flow.adapt)
    if E.outputs > 1:  # only then: one-output checkpoints written before outputs existed still resume
        fp.update(outputs=E.outputs)
    fp.update(extra)
    return fp


_last_start = [datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)]


def new_run_id(comm: MPI.Comm = MPI.COMM_WORLD) -> str:
    """run-YYYYMMDD-HHMMSS-UUUUUU: rank 0's UTC clock (one microsecond after the previous id of this
    process at the earliest, so that ids of one process differ and sort by start), the same on every rank."""
    if comm.rank == 0:
        start = max(datetime.datetime.now(datetime.timezone.utc),
                    _last_start[0] + datetime.timedelta(microseconds=1))
        _last_start[0] = start
    return comm.bcast(start.strftime("run-%Y%m%d-%H%M%S-%f") if comm.rank == 0 else None, root=0)


def _checksum(theta: np.ndarray, values: np.ndarray, history: np.ndarray, manifest: str) -> str:
    h = hashlib.sha256()
    for a in (theta, values, history):
        h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    h.update(manifest.encode())
    return h.hexdigest()


def _gathered(flow: Flow, V: PETSc.Vec) -> tuple[np.ndarray, np.ndarray]:
    """(theta, values) of a state on rank 0, sorted by coordinates: values (ndofs,), or (ndofs, m) for the
    VecNest of m outputs (collective)."""
    parts = [gather_dofs(function(flow.E.H, Vk, "checkpoint")) for Vk in blocks(V)]
    if len(parts) == 1 or parts[0][0] is None:
        return parts[0]
    return parts[0][0], np.column_stack([v for _, v in parts])


class Checkpoints:
    """The checkpoints a run writes to ``directory``: every ``every`` steps (None: only when the run is
    interrupted), keeping this run's last ``keep``.

    Rank 0 writes each file under a hidden temporary name, flushes it to disk
    and renames it (atomic), so a run killed mid-write leaves the previous
    checkpoint intact; the directory is created at the first write, and one that
    could not be (a file stands there or above it, no permission) is refused
    here, before the run (ValueError on every rank). ``run`` continues a run's
    series (default: a new run id). ``pause`` (seconds, or the environment
    variable FLOWFEM_CHECKPOINT_PAUSE) sleeps between writing and renaming: a
    testing aid to kill a run mid-write.
    """

    def __init__(self, directory: str, every: int | None, fingerprint: dict, comm: MPI.Comm = MPI.COMM_WORLD,
                 keep: int = 2, pause: float | None = None, run: str | None = None):
        if every is not None and every < 1:
            raise ValueError(f"--checkpoint-every {every}: give a positive number of steps")
        self.directory = os.path.abspath(os.fspath(directory))
        on_root(comm, lambda: _check_directory(self.directory))  # not at the first checkpoint, steps later
        self.every, self.fingerprint, self.comm, self.keep = every, dict(fingerprint), comm, max(1, keep)
        self.pause = float(os.environ.get("FLOWFEM_CHECKPOINT_PAUSE", 0.0)) if pause is None else pause
        self.run = run if run is not None else new_run_id(comm)
        self.latest: str | None = None  # the last file written

    def due(self, step: int) -> bool:
        """Whether the run writes a checkpoint after this step."""
        return self.every is not None and step % self.every == 0

    def save(self, flow: Flow, state: FlowState, U: PETSc.Vec, frames: dict | None = None) -> str:
        """Write the checkpoint of ``state`` (collective), and first the trajectory ``frames`` since the
        previous one if given (on rank 0; :meth:`flowfem.io.TrajectoryWriter.take`); returns its path."""
        theta, values = _gathered(flow, U)
        entries = flow.scheme.history()
        history = [_gathered(flow, V)[1] for _, V in entries]
        name = f"{self.run}.step-{state.step:08d}.npz"
        path = os.path.join(self.directory, name)

        def write():
            manifest = json.dumps(dict(version=VERSION, run=self.run, step=state.step, t=state.t, tau=state.tau,
                                       ts_atol=state.ts_atol, history_t=[s for s, _ in entries],
                                       ranks=self.comm.size, fingerprint=self.fingerprint, log=jsonable(state.log)))
            H = np.array(history, dtype=float).reshape(len(history), *values.shape)
            digest = _checksum(theta, values, H, manifest)
            os.makedirs(self.directory, exist_ok=True)
            if frames is not None:  # before the checkpoint: no checkpoint without its frames
                _write_atomically(self.directory, _FRAMES.format(run=self.run, step=state.step), frames)
            _write_atomically(self.directory, name, dict(theta=theta, u=values, history=H, manifest=np.array(manifest),
                                                         sha256=np.array(digest)), self.pause)
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            for old in _run_files(self.directory, self.run)[:-self.keep]:
                os.remove(os.path.join(self.directory, old))
            return path

        self.latest = on_root(self.comm, write)
        return self.latest


def _check_directory(directory: str) -> None:
    """ValueError unless ``directory`` is a directory this process may write into, or can be created:
    its nearest existing ancestor is such a directory."""
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    where = f"cannot write checkpoints to --checkpoint-dir {directory!r}"
    if not os.path.isdir(existing):
        raise ValueError(f"{where}: {existing!r} is a file, not a directory; give a directory (or a path where "
                         "one can be made)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{where}: no permission to write into {existing!r}; give a directory of yours")


def _write_atomically(directory: str, name: str, arrays: dict, pause: float = 0.0) -> None:
    """np.savez(arrays) to directory/name through a hidden temporary file, flushed to disk and renamed
    (after ``pause`` seconds): a run killed meanwhile leaves the previous file intact."""
    tmp = os.path.join(directory, "." + name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if pause:
            time.sleep(pause)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:  # e.g. a second Ctrl-C: the previous checkpoints stay as they were
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def saved_frames(checkpoint: "Checkpoint", comm: MPI.Comm = MPI.COMM_WORLD) -> tuple[dict | None, str]:
    """The trajectory frames of steps 0..checkpoint step saved with a checkpoint's run (see the module
    docstring), as arrays ``theta`` (N, gdim), ``steps``, ``times`` (m,) and ``values`` (m, N) on every
    rank, and "" -- or (frames from the first step found, or None, and a sentence saying which frames are
    missing) when a frames file is missing or unreadable (collective)."""

    def read():
        directory, step, parts = os.path.dirname(checkpoint.path), checkpoint.state.step, []
        while step >= 0:
            path = os.path.join(directory, _FRAMES.format(run=checkpoint.run, step=step))
            try:
                with np.load(path, allow_pickle=False) as f:
                    part = {k: f[k] for k in ("theta", "start", "steps", "times", "values")}
            except Exception as e:  # noqa: BLE001  (missing, zip or npy errors: the frames before are lost)
                return parts, (f"the trajectory frames up to step {step} cannot be read from {path!r} "
                               f"({type(e).__name__}); the trajectory starts after them")
            if not int(part["start"]) < step:  # each file leads back to an earlier one: never a cycle
                return parts, (f"the trajectory frames file {path!r} is damaged (it starts at step "
                               f"{int(part['start'])}, not before step {step}); the trajectory starts after it")
            parts.append(part)
            step = int(part["start"])
        return parts, ""

    parts, missing = on_root(comm, read)
    if not parts:
        return None, missing
    parts = parts[::-1]
    return dict(theta=parts[0]["theta"], steps=np.concatenate([p["steps"] for p in parts]),
                times=np.concatenate([p["times"] for p in parts]),
                values=np.concatenate([p["values"] for p in parts])), missing


def _run_files(directory: str, run: str | None = None) -> list[str]:
    """Checkpoint file names in a directory, sorted by (run, step); of one run if given."""
    names = [f for f in os.listdir(directory) if (m := _NAME.match(f)) and (run is None or m.group(1) == run)]
    return sorted(names)


def latest_checkpoint(directory: str) -> str:
    """The newest checkpoint of the run that started last in a directory (temporary files of an
    interrupted write are ignored); CheckpointError if there is none."""
    names = _run_files(directory)
    if not names:
        raise CheckpointError(f"no checkpoint in {directory!r}: it holds no RUN.step-*.npz file written by "
                              "flowfem flow")
    return os.path.join(directory, names[-1])


def read_checkpoint(path: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, theta, u, history) of one checkpoint file or the latest in a directory, verified;
    raises CheckpointError. The manifest gains ``path``, the file read."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        path = latest_checkpoint(path)
    m = _NAME.match(os.path.basename(path))
    others = [f for f in _run_files(os.path.dirname(path), m.group(1) if m else None) if f != os.path.basename(path)]
    hint = (f"; an older checkpoint is {os.path.join(os.path.dirname(path), others[-1])!r} (pass it to --resume)"
            if others else "; start the run again")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  (zip, CRC, npy header errors all mean: damaged)
        raise CheckpointError(f"checkpoint {path!r} is partial or damaged and cannot be read "
                              f"({type(e).__name__}: {e}){hint}") from None
    required = {"theta", "u", "history", "manifest", "sha256"}
    if not required <= set(arrays):
        raise CheckpointError(f"checkpoint {path!r} is incomplete: arrays {sorted(required - set(arrays))} are "
                              f"missing{hint}")
    manifest_text = str(arrays["manifest"])
    if _checksum(arrays["theta"], arrays["u"], arrays["history"], manifest_text) != str(arrays["sha256"]):
        raise CheckpointError(f"checkpoint {path!r} is corrupt: its sha256 checksum does not match its "
                              f"contents{hint}")
    manifest = json.loads(manifest_text)
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {manifest.get('version')}, this flowfem "
                              f"reads version {VERSION}")
    manifest["path"] = path
    return manifest, arrays["theta"], arrays["u"], arrays["history"]


@dataclass
class Checkpoint:
    """A checkpoint read back: the state to continue (``flow.run(U, state=state)``), the density U,
    the file, the run it belongs to and the number of ranks that wrote it."""

    state: FlowState
    U: PETSc.Vec
    path: str
    run: str
    ranks: int


def load_checkpoint(path: str, flow: Flow, fingerprint: dict | None = None) -> Checkpoint:
    """The checkpoint in ``path`` (a file, or the latest in a directory), for ``flow`` (collective).

    Refuses (CheckpointError, on every rank) a missing, partial or corrupt
    checkpoint, or one written for a different problem (``fingerprint``).
    """
    H = flow.E.H
    comm = H.space.comm
    try:
        manifest, theta, values, history = on_root(comm, lambda: read_checkpoint(path))
    except CollectiveError as e:
        raise CheckpointError(str(e)) from None
    where = f"checkpoint {manifest['path']!r}"
    if fingerprint is not None:
        stored = manifest["fingerprint"]
        diff = [k for k in sorted(set(stored) | set(fingerprint)) if _norm(stored.get(k)) != _norm(fingerprint.get(k))]
        if diff:
            details = "; ".join(f"{k}: checkpoint {stored.get(k)!r}, this run {fingerprint.get(k)!r}" for k in diff)
            raise CheckpointError(f"{where} belongs to a different problem ({details}); "
                                  "resume with the options of the run that wrote it")

    m = len(flow.outputs)
    if (values.ndim == 1 and m > 1) or (values.ndim == 2 and values.shape[1] != m):
        raise CheckpointError(f"{where} holds {1 if values.ndim == 1 else values.shape[1]} output(s), this flow "
                              f"has {m}: resume with the data of the run that wrote it")

    def restore(v: np.ndarray) -> PETSc.Vec:
        Us = []
        for column in ([v] if m == 1 else list(v.T)):
            u = H.function("u0")
            fill_by_coordinates(u, theta, column, where, "it was written for another mesh")
            Us.append(vector(u))
        return flow.as_state(Us)

    log = manifest["log"]
    for r in log:
        for k, v in r.items():
            if v is None:  # NaN, written as null
                r[k] = float("nan")
            elif isinstance(v, list):  # per output (m outputs)
                r[k] = [float("nan") if w is None else w for w in v]
    state = FlowState(int(manifest["step"]), float(manifest["t"]), float(manifest["tau"]), log,
                      manifest["ts_atol"], [(float(s), restore(v)) for s, v in zip(manifest["history_t"], history)])
    return Checkpoint(state, restore(values), manifest["path"], manifest["run"], int(manifest["ranks"]))


def _norm(v):
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
