import Foundation

// libFuzzer's entry points. One binary holds every target; the target is picked by the
// HANGAR_FUZZ_TARGET environment variable or, failing that, by the program's name
// (`fuzz-submit` runs the target "submit"; scripts/fuzz makes one symlink per target).
//
//   HANGAR_FUZZ_LIST=1 hangar-fuzz                 print the target names and exit
//   HANGAR_FUZZ_WRITE_SEEDS=DIR hangar-fuzz        write every target's seeds to DIR/<target>/ and exit

nonisolated(unsafe) var selected: FuzzTarget?

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>
) -> CInt {
    func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
    if environment("HANGAR_FUZZ_LIST") != nil {
        for target in allTargets { print("\(target.name)\t\(target.summary)") }
        exit(0)
    }
    if let directory = environment("HANGAR_FUZZ_WRITE_SEEDS") {
        writeSeeds(to: directory)
        exit(0)
    }
    var name = environment("HANGAR_FUZZ_TARGET") ?? ""
    if name.isEmpty, let program = argv.pointee?.pointee {
        let base = URL(fileURLWithPath: String(cString: program)).lastPathComponent
        if base.hasPrefix("fuzz-") { name = String(base.dropFirst("fuzz-".count)) }
    }
    guard let target = allTargets.first(where: { $0.name == name }) else {
        let names = allTargets.map(\.name).joined(separator: " ")
        FileHandle.standardError.write(
            Data("hangar-fuzz: set HANGAR_FUZZ_TARGET (or run as fuzz-<target>) to one of: \(names)\n".utf8)
        )
        exit(2)
    }
    selected = target
    currentTarget = target.name
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let target = selected else { return 0 }
    // The payload type Hangar's NATS binding hands to decoders.
    let payload = size == 0 ? Data() : Data(bytes: data!, count: size)
    target.run(payload)
    return 0
}

private func writeSeeds(to directory: String) {
    let files = FileManager.default
    for target in allTargets {
        let folder = URL(fileURLWithPath: directory).appendingPathComponent(target.name)
        try? files.createDirectory(at: folder, withIntermediateDirectories: true)
        var written = 0
        for seed in target.seeds() {
            // Run every seed first: a seed must not already fail.
            currentTarget = target.name
            target.run(seed.bytes)
            do {
                try seed.bytes.write(to: folder.appendingPathComponent(seed.name))
                written += 1
            } catch {
                FileHandle.standardError.write(Data("cannot write \(seed.name): \(error)\n".utf8))
                exit(1)
            }
        }
        print("\(target.name): \(written) seeds")
    }
}
