"""Many `python <script> <args>` command lines for the price of one interpreter start-up.

Each command line of the suite pays Python's and torch's import first (about 3 s on a 2-core CPU),
which is most of what a `--help` or a bad-input case costs. This runner imports the scripts' modules
once and then runs each command line in a fork of itself: its own process, stdin from /dev/null,
stdout and stderr of its own, `__name__ == "__main__"`, sys.argv as given, the exit code a fresh
interpreter would return (an uncaught exception prints its traceback and gives 1). What a fork
cannot give: the modules are imported already (each script's own body still runs anew, as
__main__), and the environment is the runner's, the same for every command line.

    python tests/forkrun.py < cases.json    # [[script or "-m" module, arg, ...], ...] -> JSON:
                                            # {"returncode", "stdout", "stderr"} per command line

Run from the repository root. Use run_all() from the tests.
"""

import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def child(argv: list[str], out_path: str, err_path: str) -> None:
    """In the fork: run `argv` as `python argv...` would, then leave with its exit code."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, out_path), (2, err_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    code = 0
    try:
        import runpy

        if argv[0] == "-m":  # python -m package.module: run from the repository root
            sys.argv = [importlib.util.find_spec(argv[1]).origin, *argv[2:]]
            sys.path[0] = os.getcwd()
            sys.modules.pop(argv[1], None)  # imported by the runner: run anew, as python -m does
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:
        import traceback

        tb = e.__traceback__  # from the script's own frame on, as `python script` shows it
        script = sys.argv[0] if argv[0] == "-m" else argv[0]
        while tb.tb_next and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(cases: list[list[str]], jobs: int = 2, timeout: float = 300) -> list[dict]:
    for argv in cases:  # the modules every command line will import, once, here
        if argv[0] == "-m":
            importlib.import_module(argv[1])
            continue
        folder, name = os.path.split(os.path.abspath(argv[0]))
        if folder == os.getcwd():  # a script of the repository root
            importlib.import_module(os.path.splitext(name)[0])
    tmp = tempfile.mkdtemp(prefix="forkrun_")
    results, running, todo = [None] * len(cases), {}, list(enumerate(cases))
    while todo or running:
        while todo and len(running) < jobs:
            i, argv = todo.pop(0)
            out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(argv, out, err)
            running[pid] = (i, out, err, time.time())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for p, (*_, t0) in running.items():
                if time.time() - t0 > timeout:
                    os.kill(p, signal.SIGKILL)  # its status comes with a later waitpid
            time.sleep(0.01)
            continue
        i, out, err, _ = running.pop(pid)
        with open(out) as f, open(err) as g:
            results[i] = dict(returncode=os.waitstatus_to_exitcode(status), stdout=f.read(),
                              stderr=g.read())
        os.remove(out)
        os.remove(err)
    os.rmdir(tmp)
    return results


def run_all(cases: list[list[str]], cwd: str, env: dict | None = None, jobs: int = 2,
            timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Run every command line of `cases` (script path first, relative to `cwd`) through this
    runner; each result as subprocess.run(..., capture_output=True, text=True) gives it."""
    p = subprocess.run([sys.executable, os.path.abspath(__file__), str(jobs), str(timeout)],
                       cwd=cwd, env=env, input=json.dumps(cases), capture_output=True, text=True,
                       timeout=timeout * len(cases) + 120)
    if p.returncode != 0:
        raise RuntimeError(f"forkrun failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return [subprocess.CompletedProcess([sys.executable, *argv], r["returncode"], r["stdout"],
                                        r["stderr"])
            for argv, r in zip(cases, json.loads(p.stdout))]


if __name__ == "__main__":
    sys.path[0] = os.getcwd()  # the repository root, where the scripts' modules live
    jobs, timeout = int(sys.argv[1]), float(sys.argv[2])
    print(json.dumps(main(json.load(sys.stdin), jobs, timeout)))
