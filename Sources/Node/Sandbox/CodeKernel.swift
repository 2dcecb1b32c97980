import Foundation

/// The code-interpreter kernel: a Python program that the node starts, one per code context of a
/// stateful sandbox, as a background command (``argv(language:)``). It reads run requests
/// (``request(id:code:)``) as JSON lines on its stdin and writes ``CodeKernelFrame``s as JSON lines
/// on its original stdout, which it keeps on a private descriptor: fds 1 and 2 become pipes of its
/// own, read by threads that frame whatever a cell writes (print, `os.write`, subprocesses, C code)
/// as `stream` frames, so a cell's output can never mix with the protocol.
///
/// Each cell ends with a `done` frame, after all the output it wrote before it ended (the kernel
/// writes a sync marker through each capture pipe and waits for its reader to see it). Python cells
/// share one `__main__` namespace; the last expression's value is the `main` result, with the rich
/// reprs (`_repr_html_` and friends) it has; `display(obj)` gives other results; open matplotlib
/// figures (backend Agg) are sent as PNG results after each cell and closed. SIGINT during a cell
/// raises `KeyboardInterrupt` in it; between cells it is ignored. Bash cells run in one persistent
/// `bash --noprofile --norc` (its own process group, SIGINT forwarded to it); a non-zero status is an
/// `ExitCode` error, and a shell that exits ends the kernel with status 1 after a `ShellExited` error.
/// Bash's INT trap is `return 130`, which ends the cell (or the function it is in). Known limit (bash
/// 5.2): once that trap has run while bash waited for a command, a later loop of builtins only (`while
/// true; do :; done`) no longer sees SIGINT; external commands still die of it. The node's kill ends
/// such a kernel.
/// EOF on stdin ends the kernel with status 0.
public enum CodeKernel {
    /// The languages a kernel runs, as its last argument: `javascript` needs `node` in the
    /// sandbox.
    public static let languages = ["python", "bash", "javascript"]

    /// The command that starts a kernel for `language` (one of ``languages``). With `context`, the
    /// kernel also carries the code context it serves (its id, whether it is its language's default
    /// context, its working directory) in its arguments, which it does not read: the sandbox keeps
    /// that with the kernel, so a node that re-adopts the sandbox can take the context over
    /// (``context(of:)``).
    public static func argv(language: String, context: Context? = nil) -> [String] {
        ["python3", "-u", "-I", "-c", source, language]
            + (context.map { [$0.id, $0.isDefault ? "default" : "named", $0.cwd] } ?? [])
    }

    /// The highest `N` of a context id `ctx-N` taken from a kernel's arguments: a command of the
    /// sandbox's may look like a kernel, and the ids a node makes count on from the highest taken.
    static let maxContextNumber = 1_000_000

    /// What a kernel's arguments say of the code context it serves.
    public struct Context: Sendable, Equatable {
        /// `ctx-N`.
        public var id: String
        public var language: String
        /// Whether it is the default context of its language (made by a run that named none).
        public var isDefault: Bool
        public var cwd: String
    }

    /// The context a command serves, from its argv: a kernel started with this very ``source`` and
    /// a context; nil for any other command (a kernel of another node version among them).
    public static func context(of argv: [String]) -> Context? {
        guard argv.count == 9, argv.starts(with: ["python3", "-u", "-I", "-c", source]),
            languages.contains(argv[5]), argv[6].hasPrefix("ctx-"), let number = Int(argv[6].dropFirst(4)),
            (1...maxContextNumber).contains(number), argv[6] == "ctx-\(number)",
            argv[7] == "default" || argv[7] == "named"
        else { return nil }
        return Context(id: argv[6], language: argv[5], isDefault: argv[7] == "default", cwd: argv[8])
    }

    /// One run request, as the kernel reads it: a JSON line ending in a newline.
    public static func request(id: String, code: String) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = (try? encoder.encode(CodeKernelRequest(type: "run", id: id, code: code))) ?? Data()
        data.append(0x0A)
        return data
    }

    /// The kernel, a Python 3 program (`python3 -c`), its language as `sys.argv[1]`.
    public static let source = #"""
        import os
        import sys

        os.environ["MPLBACKEND"] = "Agg"
        # Debian's matplotlib reads /etc/matplotlibrc, which a sandbox's /etc may not have; its
        # packaged copy under /usr is the same file.
        if "MATPLOTLIBRC" not in os.environ and not os.path.exists("/etc/matplotlibrc"):
            packaged = "/usr/share/matplotlib/mpl-data/matplotlibrc"
            if os.path.exists(packaged):
                os.environ["MATPLOTLIBRC"] = packaged
        # Whoever started the kernel may have blocked SIGINT; the kernel and its cells must get it.
        import signal

        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

        import ast
        import base64
        import builtins
        import codecs
        import io
        import json
        import linecache
        import select
        import signal
        import subprocess
        import tempfile
        import threading
        import time
        import traceback
        import types

        LANGUAGE = sys.argv[1] if len(sys.argv) > 1 else "python"
        if LANGUAGE == "javascript":
            import shutil

            if shutil.which("node") is None:
                sys.stderr.write("javascript needs node (nodejs), and this sandbox has none\n")
                sys.exit(2)
        KERNEL_GLOBALS = globals()
        CHUNK = 65536

        # The node's pipes, moved to private descriptors: requests come in on IN_FD, frames go out on OUT_FD.
        OUT_FD = os.dup(1)
        IN_FD = os.dup(0)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.close(null_fd)

        out_lock = threading.Lock()
        state_lock = threading.Lock()
        current_id = ""


        def clean(value):
            if isinstance(value, str):
                return value.encode("utf-8", "replace").decode("utf-8")
            return value


        def emit(frame):
            line = json.dumps(frame, ensure_ascii=False, allow_nan=False, default=str)
            data = line.encode("utf-8", "replace") + b"\n"
            with out_lock:
                view = memoryview(data)
                while view:
                    try:
                        written = os.write(OUT_FD, view)
                    except InterruptedError:
                        continue
                    view = view[written:]


        def log(text):
            emit({"type": "log", "text": clean(str(text))})


        def now_ms():
            return int(time.time() * 1000)


        class Capture:
            """One of fds 1 and 2 replaced by a pipe whose reader thread frames what arrives as streams."""

            def __init__(self, fd, name):
                self.fd = fd
                self.name = name
                read_fd, write_fd = os.pipe()
                os.set_inheritable(read_fd, False)
                os.set_inheritable(write_fd, False)
                self.read_fd = read_fd
                self.write_fd = write_fd
                os.dup2(write_fd, fd)
                self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
                self.cond = threading.Condition()
                self.seen = 0
                self.token = os.urandom(8).hex().encode()
                self.thread = threading.Thread(target=self.run, daemon=True)
                self.thread.start()

            def marker(self, number):
                return b"\x00\x1bHANGAR-SYNC-" + self.token + b"-%d\x00" % number

            def restore(self):
                try:
                    os.dup2(self.write_fd, self.fd)
                except OSError:
                    pass

            def forward(self, data, final=False):
                text = self.decoder.decode(data, final)
                if text:
                    emit({"type": "stream", "id": current_id, "name": self.name, "text": text, "t": now_ms()})

            def run(self):
                prefix = b"\x00\x1bHANGAR-SYNC-" + self.token + b"-"
                pending = b""
                while True:
                    try:
                        data = os.read(self.read_fd, CHUNK)
                    except InterruptedError:
                        continue
                    if not data:
                        self.forward(pending, True)
                        return
                    pending += data
                    while True:
                        start = pending.find(prefix)
                        if start < 0:
                            break
                        end = pending.find(b"\x00", start + len(prefix))
                        if end < 0:
                            break
                        self.forward(pending[:start])
                        number = int(pending[start + len(prefix) : end])
                        pending = pending[end + 1 :]
                        with self.cond:
                            self.seen = max(self.seen, number)
                            self.cond.notify_all()
                    # Hold back a tail that may be the start of a marker.
                    keep = 0
                    start = pending.rfind(b"\x00")
                    if start >= 0 and prefix.startswith(pending[start : start + len(prefix)]):
                        keep = len(pending) - start
                    if keep > 64:
                        keep = 0
                    body = pending[: len(pending) - keep]
                    pending = pending[len(pending) - keep :]
                    for offset in range(0, len(body), CHUNK):
                        self.forward(body[offset : offset + CHUNK])

            def sync(self, number, deadline):
                data = self.marker(number)
                try:
                    os.write(self.write_fd, data)
                except OSError as error:
                    log("cannot write the %s sync marker: %s" % (self.name, error))
                    return False
                with self.cond:
                    while self.seen < number:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            log("the %s sync marker did not come back in time" % self.name)
                            return False
                        self.cond.wait(remaining)
                return True


        def flush_std():
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                try:
                    if stream is not None:
                        stream.flush()
                except Exception:
                    pass


        captures = [Capture(1, "stdout"), Capture(2, "stderr")]
        sync_number = 0
        # `python3 -u` writes every piece of a print separately ("hi", then "\n"); a cell's output is
        # framed a line at a time instead, as Jupyter's kernels send it: sys.stdout and sys.stderr
        # hold a line until its end (or a flush; what is left is flushed when the cell ends).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.reconfigure(line_buffering=True, write_through=False)
            except Exception:
                pass


        def sync_output(restore=True):
            """Waits until what was written to fds 1 and 2 so far has been framed."""
            global sync_number
            flush_std()
            sync_number += 1
            deadline = time.monotonic() + 10
            if restore:
                for capture in captures:
                    capture.restore()
            for capture in captures:
                capture.sync(sync_number, deadline)


        # --- signals ---------------------------------------------------------------------------------------

        in_cell = False
        interrupted = False
        shell = None


        def signal_shell():
            if shell is not None and shell.poll() is None:
                try:
                    os.killpg(shell.pid, signal.SIGINT)
                except OSError:
                    pass


        def on_sigint(signum, frame):
            global interrupted
            if LANGUAGE in ("bash", "javascript"):
                if not in_cell:
                    log("SIGINT between cells ignored")
                    return
                interrupted = True
                signal_shell()
                return
            if in_cell:
                raise KeyboardInterrupt
            log("SIGINT between cells ignored")


        signal.signal(signal.SIGINT, on_sigint)


        # --- results ---------------------------------------------------------------------------------------

        TEXT_MIMES = {
            "text/html": "_repr_html_",
            "image/svg+xml": "_repr_svg_",
            "text/markdown": "_repr_markdown_",
            "text/latex": "_repr_latex_",
            "application/javascript": "_repr_javascript_",
        }
        BINARY_MIMES = {"image/png": "_repr_png_", "image/jpeg": "_repr_jpeg_"}
        MIMES = (
            ["text/plain"] + list(TEXT_MIMES) + list(BINARY_MIMES) + ["application/json"]
        )


        def json_value(value):
            try:
                json.dumps(value, allow_nan=False)
                return True
            except Exception:
                return False


        def add(data, mime, value):
            if isinstance(value, tuple) and len(value) == 2:
                value = value[0]
            if value is None:
                return
            if mime in BINARY_MIMES:
                if isinstance(value, (bytes, bytearray, memoryview)):
                    value = base64.b64encode(bytes(value)).decode("ascii")
                if isinstance(value, str):
                    data[mime] = value
            elif mime == "application/json":
                if isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except Exception:
                        pass
                if json_value(value):
                    data[mime] = value
            elif isinstance(value, str):
                data[mime] = clean(value)


        def bundle(value):
            data = {}
            if not isinstance(value, type):
                method = safe_getattr(value, "_repr_mimebundle_")
                if callable(method):
                    try:
                        result = method(include=None, exclude=None)
                        if isinstance(result, tuple) and len(result) == 2:
                            result = result[0]
                        if isinstance(result, dict):
                            for mime, item in result.items():
                                if mime in MIMES:
                                    add(data, mime, item)
                    except Exception:
                        pass
                methods = dict(TEXT_MIMES)
                methods.update(BINARY_MIMES)
                methods["application/json"] = "_repr_json_"
                for mime, name in methods.items():
                    if mime in data:
                        continue
                    method = safe_getattr(value, name)
                    if not callable(method):
                        continue
                    try:
                        add(data, mime, method())
                    except Exception:
                        pass
            if "text/plain" not in data:
                try:
                    data["text/plain"] = clean(repr(value))
                except Exception as error:
                    data["text/plain"] = "<repr failed: %s: %s>" % (type(error).__name__, clean(str(error)))
            return data


        def safe_getattr(value, name):
            try:
                return getattr(value, name, None)
            except Exception:
                return None


        def publish(value, main):
            data = bundle(value)
            sync_output(restore=False)
            emit({"type": "result", "id": current_id, "main": main, "data": data})


        def display(*objects):
            """Shows each object as a result of the running cell (not its main value)."""
            for value in objects:
                publish(value, False)


        def flush_figures():
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is None:
                return
            try:
                numbers = pyplot.get_fignums()
            except Exception:
                return
            try:
                for number in numbers:
                    figure = pyplot.figure(number)
                    buffer = io.BytesIO()
                    try:
                        figure.savefig(buffer, format="png", bbox_inches="tight")
                    except Exception:
                        traceback.print_exc()
                        continue
                    data = {
                        "text/plain": clean(repr(figure)),
                        "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                    }
                    sync_output(restore=False)
                    emit({"type": "result", "id": current_id, "main": False, "data": data})
            finally:
                try:
                    pyplot.close("all")
                except Exception:
                    pass


        # --- python cells ----------------------------------------------------------------------------------

        main_module = types.ModuleType("__main__")
        main_module.__dict__["__builtins__"] = builtins
        main_module.__dict__["display"] = display
        sys.modules["__main__"] = main_module
        builtins.display = display
        namespace = main_module.__dict__


        def cell_frames(tb):
            """The traceback without the kernel's own frames."""
            kept = []
            while tb is not None:
                if tb.tb_frame.f_globals is not KERNEL_GLOBALS:
                    kept.append(tb)
                tb = tb.tb_next
            result = None
            for item in reversed(kept):
                result = types.TracebackType(result, item.tb_frame, item.tb_lasti, item.tb_lineno)
            return result


        def error_frame(error, skip_kernel=True):
            sync_output(restore=False)
            tb = error.__traceback__
            if skip_kernel:
                tb = cell_frames(tb)
            try:
                if isinstance(error, SyntaxError) and tb is None:
                    lines = traceback.format_exception_only(type(error), error)
                else:
                    lines = traceback.format_exception(type(error), error, tb)
                text = "".join(lines)
            except Exception:
                text = ""
            try:
                value = str(error)
            except Exception:
                value = "<str failed>"
            emit(
                {
                    "type": "error",
                    "id": current_id,
                    "name": clean(type(error).__name__),
                    "value": clean(value),
                    "traceback": clean(text),
                }
            )


        def run_python(code, count):
            global in_cell
            filename = "<cell %d>" % count
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
            try:
                tree = ast.parse(code, filename, "exec")
            except (SyntaxError, ValueError, OverflowError) as error:
                error.__traceback__ = None
                error_frame(error)
                return
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            try:
                body = compile(tree, filename, "exec")
                expression = compile(last, filename, "eval") if last is not None else None
            except (SyntaxError, ValueError, OverflowError) as error:
                error.__traceback__ = None
                error_frame(error)
                return
            try:
                in_cell = True
                exec(body, namespace)
                if expression is not None:
                    value = eval(expression, namespace)
                    if value is not None:
                        namespace["_"] = value
                        publish(value, True)
                flush_figures()
                in_cell = False
            except BaseException as error:
                in_cell = False
                error_frame(error)
                try:
                    flush_figures()
                except BaseException:
                    pass


        # --- bash cells ------------------------------------------------------------------------------------

        control_read = None


        def start_shell():
            global shell, control_read
            control_read, control_write = os.pipe()
            shell = subprocess.Popen(
                ["bash", "--noprofile", "--norc"],
                stdin=subprocess.PIPE,
                stdout=1,
                stderr=2,
                pass_fds=(control_write,),
                start_new_session=True,
                close_fds=True,
            )
            os.close(control_write)
            shell.stdin.write(b"trap 'return 130 2>/dev/null' INT\n")
            shell.stdin.flush()
            return control_write


        SHELL_FD = None


        def run_bash(code, count):
            global interrupted, in_cell
            interrupted = False
            handle, path = tempfile.mkstemp(prefix="hangar-cell-", suffix=".sh")
            try:
                with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as file:
                    file.write(code)
                    if not code.endswith("\n"):
                        file.write("\n")
                command = ". %s </dev/null; printf '%%s\\n' \"$?\" >&%d\n" % (quote(path), SHELL_FD)
                in_cell = True
                try:
                    shell.stdin.write(command.encode())
                    shell.stdin.flush()
                except OSError:
                    pass
                status = read_status()
                in_cell = False
            finally:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if status is None:
                code = shell.wait()
                sync_output()
                emit(
                    {
                        "type": "error",
                        "id": current_id,
                        "name": "ShellExited",
                        "value": str(code),
                        "traceback": "",
                    }
                )
                emit({"type": "done", "id": current_id, "execution_count": count})
                sys.exit(1)
            sync_output()
            if interrupted:
                emit({"type": "error", "id": current_id, "name": "KeyboardInterrupt", "value": "", "traceback": ""})
            elif status != 0:
                emit({"type": "error", "id": current_id, "name": "ExitCode", "value": str(status), "traceback": ""})


        control_buffer = b""


        def read_control_line():
            """The next line the shell (or node) writes on the control pipe; None once it is gone."""
            global control_buffer
            while b"\n" not in control_buffer:
                if LANGUAGE == "javascript":
                    # node can take a SIGINT at a moment it cannot act on it: between two cells'
                    # scripts, or just as a cell's script returns the promise it then awaits. So once
                    # a cell is interrupted, node hears SIGINT again every 200 ms until it answers.
                    # (A blocking read would not do: Python resumes it after the signal handler.)
                    # poll, not select: select cannot take a descriptor above 1023.
                    control_poll = select.poll()
                    control_poll.register(control_read, select.POLLIN)
                    if not control_poll.poll(200):
                        if interrupted:
                            signal_shell()
                        continue
                try:
                    data = os.read(control_read, CHUNK)
                except InterruptedError:
                    continue
                if not data:
                    return None
                control_buffer += data
            line, _, control_buffer = control_buffer.partition(b"\n")
            return line


        def read_status():
            line = read_control_line()
            if line is None:
                return None
            try:
                return int(line)
            except ValueError:
                return -1


        def quote(text):
            return "'" + text.replace("'", "'\\''") + "'"


        # --- javascript cells ------------------------------------------------------------------------------
        # One node process per context (in `shell`), its cells evaluated in one global context, so
        # declarations persist; node's stdout and stderr are fds 1 and 2, framed as a python cell's
        # output. Requests go to node on a pipe of their own (its stdin is /dev/null), its answers
        # come back as JSON lines on another; SIGINT reaches node's process group like a bash
        # cell's, and `breakOnSigint` turns it into an exception in the running cell. A cell with a
        # top-level `await` is rewritten as node's own REPL does (`processTopLevelAwait`, an internal
        # module, hence `--expose-internals`): an async function whose declarations are hoisted to
        # the global scope, so they persist; its promise is awaited, and SIGINT while it is pending
        # ends the cell as interrupted. A node without that module reports the SyntaxError as before.

        NODE_SOURCE = r"""
        'use strict';
        const fs = require('fs');
        const vm = require('vm');
        const util = require('util');
        const [requestFd, replyFd] = process.argv.slice(-2).map(Number);
        const reply = (value) => fs.writeSync(replyFd, JSON.stringify(value) + '\n');
        let processTopLevelAwait = null;
        try {
            ({ processTopLevelAwait } = require('internal/repl/await'));
        } catch (_) {}
        // The awaited cell, while its promise is pending.
        let pendingCell = null;
        process.on('SIGINT', () => {
            if (pendingCell === null) return;
            pendingCell = null;
            reply({ status: 'interrupted' });
        });
        const cellFrames = (stack) => String(stack || '').split('\n')
            .filter((line, index) => index === 0 || line.includes('<cell ')).join('\n');
        function failure(error) {
            const isError = error instanceof Error;
            return {
                status: 'error',
                name: isError ? error.name : typeof error,
                value: isError ? error.message : util.inspect(error),
                traceback: isError ? cellFrames(error.stack) : '',
            };
        }
        // The cell as node's REPL runs a top-level await, or null when it has none.
        function awaitable(code) {
            if (processTopLevelAwait === null || !code.includes('await')) return null;
            try {
                new vm.Script(code);
                return null;
            } catch (error) {
                if (!(error instanceof SyntaxError)) return null;
            }
            try {
                return processTopLevelAwait(code);
            } catch (_) {
                return null;
            }
        }
        function run(request) {
            const wrapped = awaitable(request.code);
            let value;
            try {
                value = vm.runInThisContext(wrapped === null ? request.code : wrapped, {
                    filename: '<cell ' + request.count + '>', breakOnSigint: true, displayErrors: false,
                });
            } catch (error) {
                reply(error && error.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED' ? { status: 'interrupted' } : failure(error));
                return;
            }
            if (wrapped === null) {
                reply({ status: 'ok', text: value === undefined ? null : util.inspect(value) });
                return;
            }
            const cell = {};
            pendingCell = cell;
            Promise.resolve(value).then((result) => {
                if (pendingCell !== cell) return;
                pendingCell = null;
                const last = result === undefined ? undefined : result.value;
                reply({ status: 'ok', text: last === undefined ? null : util.inspect(last) });
            }, (error) => {
                if (pendingCell !== cell) return;
                pendingCell = null;
                reply(failure(error));
            });
        }
        let pending = '';
        fs.createReadStream(null, { fd: requestFd }).on('data', (chunk) => {
            pending += chunk.toString('utf8');
            let newline;
            while ((newline = pending.indexOf('\n')) >= 0) {
                const line = pending.slice(0, newline);
                pending = pending.slice(newline + 1);
                if (line.trim()) run(JSON.parse(line));
            }
        }).on('end', () => process.exit(0));
        reply({ status: 'ready' });
        """

        def read_reply():
            """The next JSON line node answers; None once node is gone."""
            line = read_control_line()
            if line is None:
                return None
            try:
                return json.loads(line)
            except ValueError:
                return {"status": "error", "name": "KernelError", "value": "node answered %r" % line[:200]}


        def start_node():
            global shell, control_read
            control_read, control_write = os.pipe()
            request_read, request_write = os.pipe()
            null_fd = os.open(os.devnull, os.O_RDONLY)
            shell = subprocess.Popen(
                ["node", "--no-warnings", "--expose-internals", "-e", NODE_SOURCE, "--", str(request_read), str(control_write)],
                stdin=null_fd,
                stdout=1,
                stderr=2,
                pass_fds=(request_read, control_write),
                start_new_session=True,
                close_fds=True,
            )
            for fd in (control_write, request_read, null_fd):
                os.close(fd)
            ready = read_reply()
            if ready is None or ready.get("status") != "ready":
                log("node did not start: %r" % ready)
                sys.exit(2)
            return os.fdopen(request_write, "wb", buffering=0)


        node_requests = None


        def run_javascript(code, count):
            global interrupted, in_cell
            interrupted = False
            in_cell = True
            try:
                node_requests.write((json.dumps({"code": code, "count": count}) + "\n").encode("utf-8", "replace"))
            except OSError:
                pass
            answer = read_reply()
            in_cell = False
            sync_output()
            if answer is None:
                code = shell.wait()
                emit({"type": "error", "id": current_id, "name": "NodeExited", "value": str(code), "traceback": ""})
                emit({"type": "done", "id": current_id, "execution_count": count})
                sys.exit(1)
            status = answer.get("status")
            if status == "interrupted" or interrupted and status != "ok":
                emit({"type": "error", "id": current_id, "name": "KeyboardInterrupt", "value": "", "traceback": ""})
            elif status == "error":
                emit(
                    {
                        "type": "error",
                        "id": current_id,
                        "name": clean(str(answer.get("name", ""))),
                        "value": clean(str(answer.get("value", ""))),
                        "traceback": clean(str(answer.get("traceback", ""))),
                    }
                )
            elif isinstance(answer.get("text"), str):
                emit({"type": "result", "id": current_id, "main": True, "data": {"text/plain": clean(answer["text"])}})


        # --- the request loop ------------------------------------------------------------------------------


        def requests():
            pending = b""
            while True:
                try:
                    data = os.read(IN_FD, CHUNK)
                except InterruptedError:
                    continue
                except KeyboardInterrupt:
                    continue
                if not data:
                    if pending.strip():
                        yield pending
                    return
                pending += data
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    if line.strip():
                        yield line


        def main():
            global current_id, SHELL_FD
            global node_requests
            if LANGUAGE not in ("python", "bash", "javascript"):
                log("unknown language %r" % LANGUAGE)
                sys.exit(2)
            if LANGUAGE == "bash":
                SHELL_FD = start_shell()
            if LANGUAGE == "javascript":
                node_requests = start_node()
            emit({"type": "ready", "language": LANGUAGE, "pid": os.getpid()})
            count = 0
            for line in requests():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict) or request.get("type") != "run":
                        raise ValueError("not a run request")
                    cell = request.get("id")
                    code = request.get("code")
                    if not isinstance(cell, str) or not isinstance(code, str):
                        raise ValueError("a run request needs a string id and code")
                except Exception as error:
                    log("malformed request ignored: %s" % error)
                    continue
                count += 1
                current_id = cell
                try:
                    if LANGUAGE == "bash":
                        run_bash(code, count)
                    elif LANGUAGE == "javascript":
                        run_javascript(code, count)
                    else:
                        run_python(code, count)
                except KeyboardInterrupt:
                    emit({"type": "error", "id": cell, "name": "KeyboardInterrupt", "value": "", "traceback": ""})
                sync_output()
                emit({"type": "done", "id": cell, "execution_count": count})
            if shell is not None:
                try:
                    (node_requests or shell.stdin).close()
                except OSError:
                    pass
            os._exit(0)


        main()
        """#
}

/// A run request as it is encoded for the kernel.
private struct CodeKernelRequest: Encodable {
    var type: String
    var id: String
    var code: String
}

/// A JSON value, as the kernel sends `application/json` results (other MIME types are strings).
public enum CodeKernelValue: Sendable, Equatable, Codable {
    /// `null`.
    case null
    /// `true` or `false`.
    case bool(Bool)
    /// A number.
    case number(Double)
    /// A string.
    case string(String)
    /// An array.
    indirect case array([CodeKernelValue])
    /// An object.
    indirect case object([String: CodeKernelValue])

    /// Decodes any JSON value.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([CodeKernelValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: CodeKernelValue].self))
        }
    }

    /// Encodes the value as the JSON it came from.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// The value as JSON text (keys sorted).
    public var jsonText: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    /// The string, if this is one.
    public var string: String? {
        if case .string(let value) = self { return value }
        return nil
    }
}

/// One line the kernel writes: which fields are set depends on ``type``.
///
/// - `ready`: ``language``, ``pid``, once at start.
/// - `stream`: ``id``, ``name`` (`stdout` or `stderr`), ``text``, ``t`` (Unix milliseconds).
/// - `result`: ``id``, ``main`` (true only for the last expression's value), ``data`` (MIME type to
///   value: strings, base64 for images, any JSON value for `application/json`).
/// - `error`: ``id``, ``name`` (the exception's class, `ExitCode`, `ShellExited`,
///   `KeyboardInterrupt`), ``value``, ``traceback``.
/// - `done`: ``id``, ``executionCount``; always a cell's last frame.
/// - `log`: ``text``, kernel diagnostics.
public struct CodeKernelFrame: Decodable, Sendable, Equatable {
    /// `ready`, `stream`, `result`, `error`, `done` or `log`.
    public var type: String
    /// The language of a `ready` frame.
    public var language: String?
    /// The kernel's pid, in a `ready` frame.
    public var pid: Int32?
    /// The cell (the request's id) the frame belongs to.
    public var id: String?
    /// The stream (`stdout`, `stderr`) or the error's name.
    public var name: String?
    /// Stream or log text.
    public var text: String?
    /// When a stream chunk was read, in Unix milliseconds.
    public var t: Int64?
    /// Whether a result is the cell's value.
    public var main: Bool?
    /// A result's representations, by MIME type.
    public var data: [String: CodeKernelValue]?
    /// The error's message.
    public var value: String?
    /// The error's traceback (cell frames only), empty for bash.
    public var traceback: String?
    /// The cell's number, in its `done` frame.
    public var executionCount: Int?

    private enum CodingKeys: String, CodingKey {
        case type, language, pid, id, name, text, t, main, data, value, traceback
        case executionCount = "execution_count"
    }

    /// Decodes one line (without its newline).
    public static func decode(_ line: Data) throws -> CodeKernelFrame {
        try JSONDecoder().decode(CodeKernelFrame.self, from: line)
    }
}

/// A kernel line longer than ``CodeKernelLineSplitter/maximumLineBytes``.
public struct CodeKernelLineTooLong: Error, Sendable, CustomStringConvertible {
    /// The cap that was passed.
    public var limit: Int

    /// The error as a sentence.
    public var description: String {
        "a code kernel line is longer than \(limit) bytes"
    }
}

/// Splits the kernel's stdout into lines, whatever the chunks it arrives in. Pure: feed it chunks,
/// get the complete lines (without their newlines); a line longer than ``maximumLineBytes`` is an
/// error, after which the node should kill the kernel.
public struct CodeKernelLineSplitter: Sendable {
    /// The longest line accepted, newline not counted.
    public let maximumLineBytes: Int
    private var pending = Data()

    /// A splitter that accepts lines of up to `maximumLineBytes` bytes (64 MiB by default).
    public init(maximumLineBytes: Int = 64 << 20) {
        self.maximumLineBytes = maximumLineBytes
    }

    /// The lines that `chunk` completes, in order; throws ``CodeKernelLineTooLong`` once the line
    /// being gathered is over the cap, even before its newline arrives.
    public mutating func feed(_ chunk: Data) throws -> [Data] {
        var lines: [Data] = []
        var rest = chunk[...]
        while let newline = rest.firstIndex(of: 0x0A) {
            let piece = rest[rest.startIndex..<newline]
            guard pending.count + piece.count <= maximumLineBytes else {
                throw CodeKernelLineTooLong(limit: maximumLineBytes)
            }
            pending.append(contentsOf: piece)
            lines.append(pending)
            pending = Data()
            rest = rest[rest.index(after: newline)...]
        }
        guard pending.count + rest.count <= maximumLineBytes else {
            throw CodeKernelLineTooLong(limit: maximumLineBytes)
        }
        pending.append(contentsOf: rest)
        return lines
    }

    /// What was fed after the last newline (a line cut short by EOF).
    public var remainder: Data { pending }
}
