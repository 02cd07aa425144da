"""A throw-away single-node SLURM cluster for tests: munged, slurmctld and slurmd started as root on this machine.

Everything lives in one temporary folder (config, munge key and socket, spool, state, logs, PID files) and the
daemons listen on free ports, so two test runs at once do not meet and nothing under /etc is touched. Clients find
the cluster through ``SLURM_CONF`` in :attr:`SlurmCluster.env`. The node has 2 CPUs, 20 GB and one fake GPU (a
``/dev/null``-like character device, which SLURM schedules like a real one); partitions ``cpu`` and ``gpu``, the names
profiles/slurm uses. Without slurmdbd there is no ``sacct``: query job states with ``squeue`` (jobs stay listed for
``MinJobAge`` = 3600 s after they end).

Install the daemons on Debian/Ubuntu with ``apt-get install -y slurm-wlm munge``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
NODE = "unsegnode"
PARTITIONS = ("cpu", "gpu")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here (not root, binaries missing, a daemon did not come up); the message says why."""


def unavailable_reason() -> str | None:
    """Why a test cluster cannot be started on this machine, or None when it can be tried."""
    if os.geteuid() != 0:
        return "the test SLURM cluster starts munged, slurmctld and slurmd as root; not running as root"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"SLURM/munge programs missing: {', '.join(missing)} (apt-get install -y slurm-wlm munge)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(folder: Path, ctld_port: int, slurmd_port: int) -> str:
    """The slurm.conf text of the one-node cluster whose files live under ``folder``."""
    return "\n".join([
        "ClusterName=unsegtest",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=1000",  # without it a job without --mem takes the whole node's memory
        "MinJobAge=3600",  # finished jobs stay visible to squeue/scontrol (the status source without slurmdbd) for
        # the whole run: a test counts them at its end
        "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "GresTypes=gpu",
        f"NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=20000 Gres=gpu:1 State=UNKNOWN",
        *(f"PartitionName={name} Nodes={NODE} MaxTime=INFINITE State=UP{' Default=YES' if name == 'cpu' else ''}"
          for name in PARTITIONS),
        "",
    ])


class SlurmCluster:
    """Start with :meth:`start`, use :attr:`env` for clients, always :meth:`stop` (stops the daemons by PID)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            "SLURM_CONF": str(folder / "slurm.conf"),
            # The slurm-jobstep plugin drops every SLURM_* variable (SLURM_CONF too) before it runs `srun` inside a
            # job; real clusters keep slurm.conf at /etc/slurm or run configless, this one does neither, so a shim
            # first on PATH (exported to jobs by sbatch --export=ALL) hands srun the config back.
            "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    @classmethod
    def start(cls) -> "SlurmCluster":
        """Write the config and start munged, slurmctld and slurmd; raises SlurmUnavailable if the node never idles."""
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        # munged insists that every folder on its socket's path is searchable by all, which pytest's tmp_path (under
        # a 0700 folder) is not; hence a folder of its own under the system temp dir.
        folder = Path(tempfile.mkdtemp(prefix="unseg-slurm-"))
        folder.chmod(0o755)
        cluster = cls(folder)
        try:
            cluster._write_files()
            cluster._launch()
            cluster._wait_until_idle()
        except OSError as error:  # e.g. no CAP_MKNOD for the fake GPU, a daemon that cannot be executed
            cluster.stop()
            raise SlurmUnavailable(f"could not set up the test cluster: {error}") from error
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _write_files(self) -> None:
        folder = self.folder
        for name in ("state", "spool", "log", "bin"):
            (folder / name).mkdir()
        (folder / "munge").mkdir(mode=0o711)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        os.mknod(folder / "gpu0", 0o666 | 0o020000, os.makedev(1, 3))  # a character device: SLURM refuses plain files
        (folder / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={folder / 'gpu0'}\n")
        (folder / "slurm.conf").write_text(slurm_conf(folder, _free_port(), _free_port()))
        shim = folder / "bin" / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={folder / "slurm.conf"} exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)

    def _launch(self) -> None:
        folder, conf = self.folder, str(self.folder / "slurm.conf")
        munge = folder / "munge"
        commands = {  # all in the foreground, so the PIDs we hold are the daemons' own
            "munged": ["munged", "--foreground", f"--key-file={munge / 'munge.key'}",
                       f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}",
                       f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"],
            "slurmctld": ["slurmctld", "-D", "-f", conf],
            "slurmd": ["slurmd", "-D", "-f", conf, "-N", NODE],
        }
        for name, command in commands.items():
            with open(folder / "log" / f"{name}.out", "wb") as out:
                self.processes[name] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                        env={**os.environ, **self.env}, start_new_session=True)
            if name == "munged":
                self._wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket")

    def _wait_for(self, ready, what: str, attempts: int = 100) -> None:
        for _ in range(attempts):
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{', '.join(dead)} exited while waiting for {what}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"{what} not ready after {attempts * 0.2:.0f} s:\n{self.log_tail()}")

    def _wait_until_idle(self) -> None:
        def node_idle() -> bool:
            states = self.run("sinfo", "--noheader", "--format=%T", check=False).stdout.split()
            return bool(states) and all(state == "idle" for state in states)

        self._wait_for(node_idle, "the node to be idle")

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scontrol, ...) against this cluster."""
        return subprocess.run(command, capture_output=True, text=True, check=check, env={**os.environ, **self.env})

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones for MinJobAge), as ``scontrol show job`` key=value fields."""
        output = self.run("scontrol", "--oneliner", "show", "job", check=False).stdout
        jobs = []
        for line in output.splitlines():
            if "JobId=" in line:
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                jobs.append(fields)
        return jobs

    def log_tail(self, characters: int = 3000) -> str:
        logs = sorted((self.folder / "log").glob("*")) + [self.folder / "munge" / "munged.log"]
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-characters:]}"
                         for path in logs if path.exists())

    def stop(self) -> None:
        """Cancel every job, stop the daemons by their PIDs (TERM, then KILL), delete the folder."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root", check=False)
        for name in reversed(list(self.processes)):  # slurmd first, munged last: the others talk through it
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
