// hangar-wasm-worker: runs one WASI preview-1 command module with WasmKit, inside the sandbox the
// node's wasm runtime (`WasmRuntime` in HangarNode) puts it in. The module's stdin, stdout and
// stderr are this process's own; it sees only the environment, arguments and directories given
// on the command line:
//
//   hangar-wasm-worker [--fuel N] [--memory-bytes N] [--dir GUEST HOST]... [--env KEY=VALUE]...
//                      -- MODULE.wasm ARGV0 ARGS...
//
// The module's exit code is this process's (modulo 256). When the engine ends the module instead
// (fuel exhausted, a trap, the linear-memory cap, a module that cannot be loaded) the worker writes
// one last stderr line `hangar-wasm-worker: KIND: MESSAGE` (KIND is fuel, memory, trap or error)
// and exits with 125; the runtime reads both. No sockets: WASI preview 1 cannot create one, and
// the worker does not link WasmKit's socket functions (sock_accept, sock_recv, sock_send and
// sock_shutdown answer ENOSYS).
//
// The worker is linked with the Swift runtime statically (Package.swift) so that it runs in a
// sandbox that has the host's /usr but not the toolchain.

import Glibc
import Synchronization
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
/// `malloc` returns NULL) and remembers the largest size it refused.
final class LinearMemoryCap: ResourceLimiter {
    let maxBytes: Int
    /// The largest size refused so far; 0 when none was.
    let refusedBytes = Atomic<Int>(0)

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    func limitMemoryGrowth(to desired: Int) throws -> Bool {
        guard desired > maxBytes else { return true }
        refusedBytes.store(max(desired, refusedBytes.load(ordering: .relaxed)), ordering: .relaxed)
        return false
    }

    func limitTableGrowth(to desired: Int) throws -> Bool { true }
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
let capabilities: [WASICapability] = [.environment, .clocks, .random, .process, .stdio, .fileSystem, .poll]

let options: Options
do {
    options = try Options(Array(CommandLine.arguments.dropFirst()))
} catch {
    end("error", "usage: \(error.message)")
}

let engine = Engine(configuration: EngineConfiguration(fuelMetering: options.fuel != nil))
let store = Store(engine: engine)
let cap = options.memoryBytes.map(LinearMemoryCap.init(maxBytes:))
if let cap { store.resourceLimiter = cap }
if let fuel = options.fuel { store.fuel = Fuel(remaining: fuel) }

let module: Module
do {
    module = try parseWasm(filePath: options.module)
} catch {
    end("error", "cannot load the module \(options.module): \(error)")
}

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
    let instance = try module.instantiate(store: store, imports: imports)
    exitCode = try wasi.start(instance)
} catch {
    try? wasi.close()
    let description = "\(error)"
    let refused = cap?.refusedBytes.load(ordering: .relaxed) ?? 0
    // `Trap.reason` is package-internal in WasmKit 0.4.2: its description is the only public way to
    // tell fuel exhaustion ("Trap: out of fuel") from other traps.
    if description.hasPrefix("Trap: out of fuel") {
        end("fuel", "fuel exhausted: the module ran its budget of \(options.fuel ?? 0) instructions")
    } else if refused > 0 {
        end(
            "memory",
            "linear memory limit of \(cap?.maxBytes ?? 0) bytes reached (a growth to \(refused) bytes was refused), "
                + "then: \(description)"
        )
    } else if error is Trap {
        end("trap", description)
    } else {
        end("error", "cannot run the module: \(description)")
    }
}
try? wasi.close()
let refused = cap?.refusedBytes.load(ordering: .relaxed) ?? 0
if refused > 0 && exitCode != 0 {
    end(
        "memory",
        "linear memory limit of \(cap?.maxBytes ?? 0) bytes reached (a growth to \(refused) bytes was refused), "
            + "then the module exited with code \(exitCode)"
    )
}
exit(Int32(truncatingIfNeeded: exitCode & 0xFF))
