"""What this machine is: CPU model, GPU name and compute capability, library versions, clocks.

Engines are tied to a device and a library version (TENSORRT.md sec. 2.5), so the build stage names its
output folder by ``device_id`` and records ``describe_device`` in the sidecar; the profile stage records
``device_conditions`` (clocks, Jetson power mode) beside every latency. Everything here tolerates missing
files and tools: a field that cannot be read is None.
"""

import datetime
import glob
import os
import platform
import re
import subprocess
import sys

# ARM (implementer, part) codes from /proc/cpuinfo of the CPUs Jetsons carry; aarch64 kernels print no
# "model name".
_ARM_PARTS = {("0x41", "0xd07"): "Cortex-A57", ("0x4e", "0x004"): "NVIDIA Carmel",
              ("0x41", "0xd42"): "Cortex-A78AE", ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd0c"): "Neoverse-N1"}


def _read(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read().replace("\x00", "").strip()
    except OSError:
        return None


def _run(cmd):
    """stdout of a command, or None when it is absent or fails (nvidia-smi, nvpmodel)."""
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10, check=True)
        return out.stdout.decode("utf-8", "replace").strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _cpuinfo_blocks():
    text = _read("/proc/cpuinfo") or ""
    blocks = []
    for chunk in text.split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def physical_cores():
    """Physical cores this process may run on (ORT's default intra-op size: hyperthreads add latency)."""
    try:
        allowed = set(os.sched_getaffinity(0))
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for b in _cpuinfo_blocks():
        if "processor" in b and int(b["processor"]) in allowed and "core id" in b:
            cores.add((b.get("physical id", "0"), b["core id"]))
    return len(cores) or len(allowed)


def cpu_model():
    """e.g. "Intel(R) Xeon(R) Processor", "Cortex-A78AE"; the machine name when nothing better is known."""
    blocks = _cpuinfo_blocks()
    for b in blocks:
        if b.get("model name"):
            return b["model name"]
    for b in blocks:
        part = _ARM_PARTS.get((b.get("CPU implementer"), b.get("CPU part")))
        if part:
            return part
    return platform.processor() or platform.machine() or "unknown-cpu"


def board_model():
    """The board (e.g. "NVIDIA Jetson AGX Xavier Developer Kit") from the device tree, or None."""
    return _read("/proc/device-tree/model")


def l4t_release():
    """Jetson L4T release like "R35.4.1" from /etc/nv_tegra_release, or None off Jetson."""
    text = _read("/etc/nv_tegra_release")
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text or "")
    return "R{}.{}".format(m.group(1), m.group(2)) if m else None


def gpu_info(index=0):
    """{"name", "compute_capability" ("8.7"), "sm" (87), "memory_mib"} of CUDA device ``index``, or None.

    Asks pycuda (present wherever the TensorRT backend runs), then nvidia-smi (desktop GPUs).
    """
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(index)
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": "{}.{}".format(major, minor),
                "sm": major * 10 + minor, "memory_mib": dev.total_memory() >> 20}
    except Exception:  # no pycuda, no driver, no device: try the next source
        pass
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits",
                "-i", str(index)])
    if not out:
        return None
    parts = [p.strip() for p in out.splitlines()[0].split(",")]
    cc = parts[1] if len(parts) > 1 and re.match(r"^\d+\.\d+$", parts[1]) else None
    return {"name": parts[0], "compute_capability": cc,
            "sm": int(cc.replace(".", "")) if cc else None,
            "memory_mib": int(float(parts[2])) if len(parts) > 2 and parts[2].replace(".", "").isdigit() else None}


def slug(text):
    """Lower-case, [a-z0-9-] only: "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz" -> "intel-core-i7-8700"."""
    text = re.sub(r"\((r|tm)\)", " ", text.lower())
    text = re.sub(r"@.*$", " ", text)
    text = re.sub(r"\b(cpu|nvidia)\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def library_versions(backend):
    """Versions that decide whether an engine folder can be loaded here (the backend's library first)."""
    versions = {"python": platform.python_version(), "numpy": None}
    try:
        import numpy
        versions["numpy"] = numpy.__version__
    except ImportError:
        pass
    if backend == "ort":
        try:
            import onnxruntime
        except ImportError:
            from mess_edge.errors import MessError
            raise MessError("got --backend ort but onnxruntime is not installed; expected onnxruntime >= 1.14; "
                            "try `pip install onnxruntime` (or the Jetson Zoo build), or --backend trt")
        versions["onnxruntime"] = onnxruntime.__version__
    if backend == "trt":
        from mess_edge.runtime.trt_runner import import_trt
        versions["tensorrt"] = import_trt().__version__
        try:
            import pycuda
            import pycuda.driver as cuda
            versions["pycuda"] = pycuda.VERSION_TEXT
            versions["cuda_driver"] = cuda.get_driver_version()
        except Exception:  # pycuda absent or no driver: recorded as missing, the runner will say why
            versions["pycuda"] = None
    return versions


def describe_device(backend, providers=("cpu",), dla_core=None):
    """The device as the sidecar and the LUT record it; ``id`` names the engine folder.

    ids: "cpu-<cpu slug>-ort" (ORT on the CPU), "<gpu slug>-sm<NN>-trt<major.minor>[-dla<k>]" (TensorRT),
    "<gpu slug>-sm<NN>-ort-<provider>" (ORT's CUDA / TensorRT providers).
    """
    on_gpu = backend == "trt" or bool(set(providers) & {"cuda", "trt"})
    desc = {"kind": "gpu" if on_gpu else "cpu", "cpu_model": cpu_model(), "board": board_model(),
            "l4t": l4t_release(), "machine": platform.machine(), "gpu": gpu_info() if on_gpu else None}
    if on_gpu:
        gpu = desc["gpu"] or {"name": "unknown-gpu", "sm": None}
        base = "{}-sm{}".format(slug(gpu["name"]), gpu["sm"] if gpu["sm"] is not None else "unknown")
        if backend == "trt":
            version = library_versions("trt")["tensorrt"]
            desc["id"] = "{}-trt{}".format(base, ".".join(version.split(".")[:2]))
            if dla_core is not None:
                desc["id"] += "-dla{}".format(dla_core)
        else:
            desc["id"] = "{}-ort-{}".format(base, "trt" if "trt" in providers else "cuda")
    else:
        desc["id"] = "cpu-{}-ort".format(slug(desc["cpu_model"]))
    return desc


def device_conditions():
    """Clocks and power mode where readable (absent fields are None): what a latency was measured under."""
    freqs = []
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")):
        value = _read(path)
        if value and value.isdigit():
            freqs.append(int(value) // 1000)
    cond = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": sys.platform, "cpus_online": os.cpu_count(), "physical_cores": physical_cores(),
            "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "cpu_cur_mhz": freqs or None, "jetson_power_mode": None, "gpu_clocks": None}
    out = _run(["nvpmodel", "-q"])
    if out:  # "NV Power Mode: MAXN\n0"
        m = re.search(r"Power Mode:\s*(.+)", out)
        cond["jetson_power_mode"] = m.group(1).strip() if m else out.splitlines()[0]
    devfreq = {}
    for d in glob.glob("/sys/class/devfreq/*"):
        name = os.path.basename(d)
        if re.search(r"gpu|gv11b|ga10b|gp10b", name):  # Jetson integrated GPUs
            devfreq[name] = {"cur_hz": _read(os.path.join(d, "cur_freq")),
                             "max_hz": _read(os.path.join(d, "max_freq"))}
    if devfreq:
        cond["gpu_clocks"] = devfreq
    else:
        out = _run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,clocks.max.sm,pstate,power.limit",
                    "--format=csv,noheader,nounits", "-i", "0"])
        if out:
            keys = ["sm_mhz", "mem_mhz", "max_sm_mhz", "pstate", "power_limit_w"]
            cond["gpu_clocks"] = dict(zip(keys, [p.strip() for p in out.splitlines()[0].split(",")]))
    return cond
