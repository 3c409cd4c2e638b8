"""Small pieces every script shares: the device and autocast, torchrun helpers, atomic files and
JSONL logs, checkpoint folders and their files (config.json, safetensors, heads), the
learning-rate schedule. The life of a run folder is in runs.py; config -> flags in
flags.py; the CPU and GPU fast paths in speed.py.
"""

import contextlib
import json
import math
import os
import re
import shutil

import torch

try:
    import fcntl  # file locks (POSIX); append_jsonl
except ImportError:  # Windows: one process per file
    fcntl = None

# ----------------------------------------------------------------------------- device


def get_device(name: str = "auto") -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------- torchrun (DDP)
# Under `torchrun --nproc_per_node N`, each process takes every N-th micro-batch of the same global
# batch; DistributedDataParallel averages the gradients, so the update equals the single-process
# one. Rank 0 alone writes the run folder.


def ddp_init(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device). A plain `python x.py` is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def ddp_barrier(world: int):
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def ddp_mean(value: float, world: int, device: str) -> float:
    """The mean of a per-process number over all processes (for logging)."""
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / world


def autocast_dtype(device: str) -> torch.dtype | None:
    """The dtype autocast(device) computes in: bf16 on CUDA, None (plain fp32) elsewhere."""
    return torch.bfloat16 if device.startswith("cuda") else None


def autocast(device: str):
    """bf16 autocast on CUDA (weights and optimizer stay fp32); plain fp32 elsewhere."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# ----------------------------------------------------------------------------- atomic files


def atomic_write(path: str, write):
    """Call write(tmp_path), then rename onto `path`: readers see the old file or the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    atomic_write(path, write)


def atomic_torch_save(obj, path: str):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path: str, *rows: dict):
    """Append whole lines, one per row, in one write. A torn last line (a kill mid-write) is cut
    off first, so a new line never glues onto half of an old one. The file is locked meanwhile,
    so processes appending to one file (frontier.py's parallel sweep) never cut each other's
    line in progress."""
    line = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with open(path, "ab+") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
        f.write(line)
        f.flush()


def read_jsonl(path: str) -> list[dict]:
    """All complete rows of a JSONL file. A torn last line is dropped; a malformed line anywhere
    else is an error that names the file and line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # the last piece is b"" after a final newline, or a line cut short by a kill: ignored either way
    rows = []
    for n, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{path}:{n}: malformed JSON line") from None
    return rows


def write_jsonl(path: str, rows: list[dict]):
    """Replace a JSONL file atomically (used to cut a log back to a resumed step)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, write)


# ----------------------------------------------------------------------------- checkpoint folders
# A checkpoint is a folder (config.json + weights, the Hugging Face layout); a run folder keeps
# its checkpoints as step_XXXXXX/ and, for the reward model, its best one as best/.


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"step_{step:06d}")


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of every finished checkpoint of a run, in step order."""
    found = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = re.fullmatch(r"step_(\d{6})", name)
        if m and os.path.isfile(os.path.join(out_dir, name, "config.json")):
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def resolve_checkpoint(path: str, need: tuple = ("config.json",),
                       hub: dict | bool = False) -> str:
    """The one answer to "which folder does this name stand for", for every model the scripts load:
      - a folder holding every file of `need`: that folder;
      - a run folder: its best/ checkpoint if it keeps one (the reward model), else its last
        step_XXXXXX/;
      - else a hub repository, downloading the files of `need` (cached by huggingface_hub): `hub`
        maps the names it knows to repository ids, or is True to take any name as an id.
    """
    if os.path.isdir(path):
        candidates = [path, os.path.join(path, "best")] + [p for _, p in
                                                           list_checkpoints(path)[-1:]]
        for folder in candidates:
            if all(os.path.isfile(os.path.join(folder, f)) for f in need):
                return folder
        missing = next(f for f in need if not os.path.isfile(os.path.join(path, f)))
        raise FileNotFoundError(f"{path} has no {missing}: not a checkpoint or run folder")
    if isinstance(hub, dict) and path in hub:
        return hub_download(hub[path], need)
    if hub is True and not path.startswith((".", "/", "~")):
        return hub_download(path, need)
    known = f" nor one of {', '.join(hub)}" if isinstance(hub, dict) else ""
    raise ValueError(f"'{path}' is neither a folder{known}")


def file_stamp(path: str) -> str:
    """Path, size and modification time of a file, or of every file under a folder: part of a
    cache key, so that a checkpoint retrained in place (same path, new weights) or a regenerated
    data file misses the cache instead of reusing stale results."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
        sts = [os.stat(f) for f in files]
        return (f"{os.path.abspath(path)}:{len(files)}:{sum(s.st_size for s in sts)}:"
                f"{max((s.st_mtime_ns for s in sts), default=0)}")
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds (False at
    once under HF_HUB_OFFLINE=1). Asked before a download, so that offline the error comes now
    rather than after huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection proves nothing: let the download try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_download(repo_id: str, files: tuple) -> str:
    """Download `files` of a hub repo (cached by huggingface_hub); return their folder. With the
    hub unreachable, a copy already in the cache still works; anything else fails at once."""
    from huggingface_hub import hf_hub_download

    online = hub_reachable()
    try:
        paths = [hf_hub_download(repo_id, f, local_files_only=not online) for f in files]
    except Exception as e:  # offline, DNS, HTTP errors all land here
        why = type(e).__name__ if online else "the hub is unreachable and it is not cached"
        raise OSError(f"could not fetch {repo_id} from the Hugging Face hub ({why}); download "
                      f"it elsewhere and pass the local folder instead (--init, --base_model, "
                      f"--ground_truth)") from None
    return os.path.dirname(paths[0])


def load_files(builder: str, files: list[str]):
    """datasets.load_dataset of local files, builder "parquet" or "json" (JSON lines, .gz too). A
    file it cannot read (a line cut off, a corrupt parquet file) is one ValueError naming that
    file, and for JSON lines the line, instead of datasets' traceback."""
    import datasets
    from datasets.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)  # its own "Failed to load ..." line: ours says it
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as e:  # datasets' DatasetGenerationError, pyarrow's errors, ...
        cause = e.__cause__ or e  # the reader's own message, under datasets' generic one
        reason = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
        where = next(filter(None, map(unreadable_at, files)), ", ".join(files))
        raise ValueError(f"could not read {where}" + ("" if ": " in where else f": {reason}")
                         ) from None
    finally:
        logging.set_verbosity(verbosity)


def unreadable_at(path: str) -> str | None:
    """Where a data file fails to read: "path:line: ..." for a JSON-lines file with a line that is
    not JSON (cut off, say), the path for another unreadable file (a parquet file without its
    footer, a gzip file cut short); None if it reads."""
    import gzip

    import pyarrow.parquet as pq

    try:
        if path.endswith(".parquet"):
            pq.read_metadata(path)
        elif re.search(r"\.jsonl(\.gz)?$", path):
            with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
                for n, line in enumerate(f, 1):
                    try:
                        json.loads(line) if line.strip() else None
                    except json.JSONDecodeError:
                        return f"{path}:{n}: not a JSON object (a line cut off?)"
    except Exception:  # pyarrow's, gzip's (cut short), a bad UTF-8 byte, ...
        return path
    return None


def copy_checked(targets: dict, sd: dict, what: str, hint: str = ""):
    """Copy sd into `targets`' tensors: equal key sets and shapes, else an error naming the key."""
    missing, unexpected = sorted(targets.keys() - sd.keys()), sorted(sd.keys() - targets.keys())
    if missing or unexpected:
        key = missing[0] if missing else unexpected[0]
        kind = "missing" if missing else "unexpected"
        raise ValueError(f"not {what} for this config: {kind} key '{key}' "
                         f"({len(missing)} missing, {len(unexpected)} unexpected)")
    with torch.no_grad():
        for k, v in sd.items():
            if v.shape != targets[k].shape:
                raise ValueError(f"shape of '{k}' is {tuple(v.shape)}, expected "
                                 f"{tuple(targets[k].shape)} {hint}".rstrip())
            targets[k].copy_(v)


def save_head(head: torch.nn.Linear, path: str):
    """A linear head (reward, value) as a safetensors file beside a checkpoint."""
    from safetensors.torch import save_file

    save_file({"weight": head.weight.detach().cpu().contiguous(),
               "bias": head.bias.detach().cpu().contiguous()}, path)


def load_head(path: str) -> torch.nn.Linear:
    sd = read_safetensors(path)
    head = torch.nn.Linear(sd["weight"].shape[1], sd["weight"].shape[0])
    head.load_state_dict(sd)
    return head


def read_hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_safetensors(path: str) -> dict:
    """A state dict from a .safetensors file, with a clear error for a truncated or foreign one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def write_folder(final: str, write):
    """Fill a folder with write(folder) under a temporary name, then rename it into place: a
    reader never sees half a checkpoint. An existing folder of that name is replaced by two
    renames (old aside, new in), so a kill leaves one whole version under `final` or `.old`."""
    tmp, old = final + ".tmp", final + ".old"
    if os.path.exists(old) and not os.path.exists(final):  # a kill between the two renames
        os.rename(old, final)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- schedule, seeds


def lr_at(step: int, lr: float, warmup: int, total: int | None = None, final_frac: float = 0.1):
    """Learning rate at optimizer step `step` (1, 2, ...): linear warm-up over `warmup` steps,
    then constant (total=None) or cosine decay to final_frac * lr after step `total`."""
    if step <= warmup:
        return lr * step / warmup
    if total is None or total <= warmup:
        return lr
    progress = min(1.0, (step - 1 - warmup) / (total - warmup))
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def mean_stderr(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, standard error = sample standard deviation / sqrt(n)); (None, None) for no values,
    (mean, None) for one."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def seed_for(seed: int, i: int) -> int:
    """The seed of the i-th step (batch, chunk, epoch) of a run seeded `seed`: every step draws
    from its own generator, so a resumed run needs nothing but the step to draw the same."""
    return seed * 1_000_003 + i
