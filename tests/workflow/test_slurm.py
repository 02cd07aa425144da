"""profiles/slurm on a real (single-node, throw-away) SLURM cluster: the tiny workflow submitted through the official
executor plugin, GPU rules asking for a GPU, results equal to a local run's; and retries with more memory.

Needs root and the slurm-wlm and munge packages (CI installs them, see .ci/run); skips otherwise, except under CI=true,
where a missing cluster is a failure rather than a silent skip.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from snakemake.resources import Resource

from slurm_cluster import SlurmCluster, SlurmUnavailable
from workflow_helpers import ROOT, snakemake

SLURM_PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
GPU_RULES = {"features", "train"}


def skip_or_fail(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the SLURM test, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        skip_or_fail("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    try:
        started = SlurmCluster.start()
    except SlurmUnavailable as error:
        skip_or_fail(str(error))
    try:
        yield started
    finally:
        started.stop()


def ci_profile(folder: Path, **overrides) -> Path:
    """profiles/slurm as the test cluster needs it: same resources, groups and retries, minus what it lacks."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    del profile["default-resources"]["slurm_account"]  # no accounting database, so no accounts to check it against
    profile.update({
        "slurm-status-command": "squeue",  # without slurmdbd sacct answers nothing and the plugin would wait forever
        "slurm-no-account": True,  # (plugin 2.8.0 still tries to guess one with sacct, fails, and goes on without)
        "slurm-init-seconds-before-status-checks": 1,  # jobs here take seconds, not hours: poll soon
        "slurm-keep-successful-logs": True,
        "max-threads": 2,  # the node has 2 CPUs; the profile gives the GPU rules 4 threads
        "latency-wait": 5,  # one machine: outputs are there when the job ends
        **overrides,
    })
    # Fewer, bigger CPU jobs than on a cluster, to shorten the test's chain of submissions (each costs two Snakemake
    # start-ups and a polling round): pseudo-labels join the spectral job, predictions the report job.
    profile["groups"].update({"pseudolabels": "spectral", "predict": "report"})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def sbatch_calls(verbose_output: str) -> dict[str, str]:
    """Submitted job name (the sbatch --comment: rule_{rule}[_wildcards_...] or rule_{group}...) → its sbatch line."""
    calls = re.findall(r"^sbatch call: (sbatch .*)$", verbose_output, re.M)
    return {re.search(r"--comment (\S+)", call).group(1): call for call in calls}


def run_id(verbose_output: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", verbose_output).group(1)


def test_profile_grows_memory_and_time_with_each_attempt():
    profile = yaml.safe_load(SLURM_PROFILE.read_text())

    def evaluate(expression, attempt, **names):
        return Resource.cli_evaluator("r", str(expression), wildcards=None, input=names.get("input"),
                                      attempt=attempt, threads=3, async_run=None)

    defaults = profile["default-resources"]
    assert [evaluate(defaults["mem_mb"], a) for a in (1, 2, 3)] == [4000, 8000, 12000]
    assert [evaluate(defaults["runtime"], a) for a in (1, 2, 3)] == [60, 120, 180]
    assert evaluate(defaults["cpus_per_task"], 1) == 3  # the job's threads
    for rule in ("features_shard", "train"):
        assert profile["set-resources"][rule]["gpu"] == 1
        assert evaluate(profile["set-resources"][rule]["mem_mb"], 2) == 32000

    class Inputs:  # the features job's input names: index (+ weights) when it extracts, shards when it joins
        pass

    extracting, joining = Inputs(), Inputs()
    extracting.index, joining.shards = "index.csv", ["0.zarr", "1.zarr"]
    features = profile["set-resources"]["features"]
    assert evaluate(features["gpu"], 1, input=extracting) == 1 and evaluate(features["gpu"], 1, input=joining) == 0
    assert evaluate(features["slurm_partition"], 1, input=extracting) == "gpu"
    assert evaluate(features["slurm_partition"], 1, input=joining) == "cpu"
    assert (evaluate(features["mem_mb"], 2, input=extracting) == 32000
            and evaluate(features["mem_mb"], 2, input=joining) == 4000)
    threads = profile["set-threads"]["features"]
    assert evaluate(threads, 1, input=extracting) == 4 and evaluate(threads, 1, input=joining) == 1


def without_workdir(path: Path, workdir: Path) -> str:
    return path.read_text().replace(str(workdir), "<workdir>")


def assert_same_pngs(local: Path, remote: Path):
    names = sorted(p.name for p in local.glob("*.png"))
    assert names and names == sorted(p.name for p in remote.glob("*.png"))
    for name in names:
        assert np.array_equal(np.asarray(Image.open(local / name)), np.asarray(Image.open(remote / name))), name


def strip_provenance(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "provenance"}


def test_tiny_workflow_on_slurm_matches_the_local_run(cluster, tiny_run, tmp_path):
    local_dir, config, _ = tiny_run
    workdir = tmp_path / "run"
    workdir.mkdir()
    profile = ci_profile(tmp_path / "profile")
    result = snakemake(workdir, config, "--profile", str(profile), "--verbose", env=cluster.env)
    output = result.stdout + result.stderr

    # GPU rules were submitted with a GPU request to the GPU partition, the others with neither.
    calls = sbatch_calls(output)
    gpu_calls = {name: call for name, call in calls.items() if name.split("_wildcards_")[0][len("rule_"):] in GPU_RULES}
    assert set(gpu_calls) == {"rule_features_wildcards_vits16", "rule_train_wildcards_linear_1",
                              "rule_train_wildcards_linear_2"}, sorted(calls)
    for name, call in calls.items():
        asks_gpu = "--gpus=1" in call.split() and "-p gpu" in call
        assert asks_gpu == (name in gpu_calls), call
        assert "--requeue" in call.split() and "-A " not in call, call
    print("sbatch line of a GPU rule:", gpu_calls["rule_features_wildcards_vits16"])

    # ... and slurmctld saw them that way: every job of this run completed, GPU jobs hold gres:gpu:1.
    jobs = [job for job in cluster.jobs() if job["JobName"] == run_id(output)]
    assert len(jobs) == len(calls)
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job
        gpu_job = job["Comment"] in gpu_calls
        assert (job.get("TresPerJob") == "gres:gpu:1") == gpu_job, job
        assert job["Partition"] == ("gpu" if gpu_job else "cpu"), job

    # Grouping: the light jobs shared SLURM jobs, so fewer submissions than rule jobs.
    rule_jobs = sum(int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output.split("Job stats:")[1], re.M)
                    if rule not in ("total", "all"))
    assert (any(name.startswith("rule_spectral") for name in calls)
            and any(name.startswith("rule_report") for name in calls))
    assert len(calls) < rule_jobs

    # Same results as the local run. Paths in the index differ by the working directory only.
    local, remote = local_dir / "results" / "tiny", workdir / "results" / "tiny"
    assert (without_workdir(remote / "index/images.csv", workdir)
            == without_workdir(local / "index/images.csv", local_dir))
    assert len(list(csv.DictReader((remote / "index/images.csv").open()))) == 8
    for relative in ["masks/multik/masks.json", "proposals/default/proposals.json",
                     "pseudolabels/km3/pseudolabels.json", "predict/linear/instances.json"]:
        assert json.loads((remote / relative).read_text()) == json.loads((local / relative).read_text()), relative
    assert_same_pngs(local / "saliency/bipart", remote / "saliency/bipart")
    assert_same_pngs(local / "predict/linear", remote / "predict/linear")
    local_metrics = strip_provenance(json.loads((local / "evaluate/val/metrics.json").read_text()))
    remote_metrics = strip_provenance(json.loads((remote / "evaluate/val/metrics.json").read_text()))
    assert remote_metrics == local_metrics

    # Nothing left incomplete: a local dry run in the same folder finds everything up to date.
    assert "Nothing to be done" in snakemake(workdir, config, "-n").stdout


def test_failed_job_is_resubmitted_with_more_memory_and_time(cluster, tmp_path):
    # A rule that fails unless it got 8000 MB, i.e. on its first attempt under the profile's "4000 * attempt".
    (tmp_path / "Snakefile").write_text(
        'rule needs_memory:\n'
        '    output: "done.txt"\n'
        '    shell: "test {resources.mem_mb} -ge 8000 && echo {resources.mem_mb} {resources.runtime} > {output}"\n'
    )
    profile = ci_profile(tmp_path / "profile", retries=1)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "-s", str(tmp_path / "Snakefile"),
         "--profile", str(profile), "--verbose"],
        capture_output=True, text=True, env={**os.environ, **cluster.env},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    submitted = re.findall(r"^sbatch call: .* -t (\d+) --mem (\d+) .*--attempt (\d)", output, re.M)
    assert submitted == [("60", "4000", "1"), ("120", "8000", "2")]
    assert (tmp_path / "done.txt").read_text().split() == ["8000", "120"]


def test_a_requeued_training_resumes_from_its_last_checkpoint(cluster, tmp_path):
    # A preempted job, as SLURM sees it: `scontrol requeue` of a running training submitted with --requeue (as the
    # profile's slurm-requeue does) kills it and starts it again; it continues last.pt and ends with the model an
    # uninterrupted run gives.
    import time

    import torch

    from helpers import TRAIN_CHILD, training

    whole = training(tmp_path / "whole")
    assert whole.wait() == 0, whole.stderr.read()
    script = tmp_path / "train_child.py"
    script.write_text(TRAIN_CHILD)
    out = tmp_path / "requeued"
    # --open-mode=append keeps the first run's output beside the second's: a failure shows both.
    submitted = cluster.run("sbatch", "--parsable", "--requeue", "--open-mode=append", "-p", "cpu", "-c", "1", "-o",
                            str(tmp_path / "job-%j.log"), "--export=ALL,OMP_NUM_THREADS=1,PYTHONWARNINGS=ignore",
                            "--wrap", f"{sys.executable} {script} {out} 0.5")
    job_id = submitted.stdout.strip().split(";")[0]

    def state() -> dict[str, str]:
        return next(job for job in cluster.jobs() if job["JobId"] == job_id)

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        last = out / "last.pt"
        if last.exists() and torch.load(last, weights_only=False)["epoch"] >= 2:
            break
        time.sleep(0.1)
    assert state()["JobState"] == "RUNNING", state()
    cluster.run("scontrol", "requeue", job_id)
    hurried = False
    while state()["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED") and time.monotonic() < deadline + 300:
        # SLURM holds a requeued job back (BeginTime) for minutes before its second run; shorten that, but not to
        # "now": slurmd refuses to launch a job whose credential is as old as its kill, to the second ("Job N already
        # killed, do not launch batch job"), and the job then fails with exit 1:0 before it starts.
        if not hurried and state()["JobState"] == "PENDING" and "BeginTime" in state().get("Reason", ""):
            cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+3", check=False)
            hurried = True
        time.sleep(0.5)
    job = state()
    log = (tmp_path / f"job-{job_id}.log").read_text()
    facts = {key: job.get(key) for key in ("JobState", "Reason", "ExitCode", "Restarts", "RunTime")}
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", (facts, log[-3000:], cluster.log_tail())
    assert "resume: continuing" in log, log[-3000:]
    expected = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    got = torch.load(out / "model.pt", weights_only=False)
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
