"""Memory: what a request will need, checked against what this machine has, before allocating it.

A size the user chooses (cells of a mesh, neurons of a readout, the width
of a network, data points) can need more memory than the machine has; the
kernel then kills the process after minutes of swapping, or NumPy fails
deep inside with its own words. Every such size is estimated first and
passed to :func:`require`, which refuses it in one line:

    a readout with 1.5e+09 neurons needs about 375.0 GB but this machine has
    23.1 GB available: use fewer subdivisions or a lower quadrature degree

Estimates count the arrays that are alive at once at the peak (stated at
each call) and are meant to be right within a factor of about 2; below the
available memory nothing is refused, so a request that fits is never
stopped by a pessimistic estimate by more than that factor.
"""

from __future__ import annotations

GB = 1e9
_CGROUP_LIMITS = (  # (limit, usage) of this process's control group: a container's memory limit
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
)


def available_bytes() -> int | None:
    """Bytes this process can still allocate without swapping: ``MemAvailable`` of /proc/meminfo,
    or what the control group's limit (a container's) leaves if that is less. None where neither
    is readable (not Linux): then :func:`require` refuses nothing."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    for limit_path, usage_path in _CGROUP_LIMITS:
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():  # "max" (v2) means no limit; v1 writes a huge number instead
            found.append(max(int(limit) - usage, 0))
        break
    return min(found) if found else None


def amount(nbytes: float) -> str:
    """A number of bytes for a person: ``512 MB``, ``23.5 GB``, ``1.2 TB``."""
    if nbytes >= 1e12:
        return f"{nbytes / 1e12:.1f} TB"
    if nbytes >= GB:
        return f"{nbytes / GB:.1f} GB"
    return f"{nbytes / 1e6:.0f} MB"


def require(nbytes: float, what: str, fix: str, comm=None) -> None:
    """Raise ValueError "WHAT needs about X but this machine has Y available: FIX" if the
    estimate ``nbytes`` exceeds the available memory (:func:`available_bytes`).

    Without ``comm`` the estimate is this process's. With an MPI communicator (collective: call
    on every rank) it is each rank's, the ranks that share a machine add up, and every rank
    gets the same answer (the machine with the least memory per rank decides).
    ``nbytes`` may be an int of any size (e.g. 20 * 4**k for k refinements) or inf.
    """
    nbytes = float(nbytes) if nbytes < 1e300 else float("inf")
    needs = "more than 1000 TB" if nbytes >= 1e15 else f"about {amount(nbytes)}"
    available = available_bytes()
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        sharing = node.size
        node.Free()
        share = comm.allreduce(float("inf") if available is None else available / sharing, op=MPI.MIN)
        if nbytes > share:
            raise ValueError(f"{what} needs {needs} on each rank but this machine has "
                             f"{amount(share)} available per rank ({sharing} ranks share it): {fix}")
        return
    if available is not None and nbytes > available:
        raise ValueError(f"{what} needs {needs} but this machine has {amount(available)} "
                         f"available: {fix}")
