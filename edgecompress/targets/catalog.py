"""What `edgecompress.targets` exports, imported on first use of one of its names (the package's `__getattr__`)."""
from __future__ import annotations

import logging
from typing import Iterable

from edgecompress.errors import UserError
from edgecompress.profiles import Profile, load_profile
from edgecompress.targets.base import PROBES, RUNTIMES, BuildResult, Latency, Target
from edgecompress.targets import estimate as _estimate, openvino as _openvino, ort as _ort  # noqa: F401 (register)
from edgecompress.targets import ssh as _ssh, tensorrt as _tensorrt  # noqa: F401 (register)
from edgecompress.targets.estimate import LayerCost, estimate_latency, layer_costs
from edgecompress.targets.ssh import SSHDevice, SSHProbe
from edgecompress.targets.timing import Ratio, Timing, compare, decided, time_builds

log = logging.getLogger(__name__)


def _probe_for(profile: Profile, source: str, cls: type[Target]):
    """(probe, effective source, notes) for a latency source; local falls back to estimate."""
    if source == "estimate":
        return PROBES.get("estimate")(profile), "estimate", ()
    if source.startswith("ssh://"):
        SSHDevice.parse(source)   # an address ssh would read as an option is refused, naming why
        return PROBES.get("ssh")(profile, source), source, ()
    if source != "local":
        raise UserError(f"unknown latency source {source!r}", "use local, estimate or ssh://user@host[:port]")
    if cls.local_available():
        return PROBES.get(profile.runtime)(profile), "local", ()
    note = (f"{profile.runtime} cannot run on this machine (TensorRT and a CUDA GPU are needed): latency is "
            f"ESTIMATED from {profile.name}'s published device figures; use --device ssh://user@host to measure")
    log.warning(note)
    return PROBES.get("estimate")(profile), "estimate", (note,)


def get_target(profile: Profile | str, *, device: str | None = None,
               extra_dirs: Iterable = ()) -> Target:
    """The Target for `profile`; `device` ("local" | "estimate" | "ssh://...") overrides its latency."""
    if isinstance(profile, str):
        profile = load_profile(profile, extra_dirs=extra_dirs)
    cls = RUNTIMES.get(profile.runtime)
    probe, source, notes = _probe_for(profile, device or profile.latency, cls)
    return cls(profile, probe=probe, latency_source=source, notes=notes)

