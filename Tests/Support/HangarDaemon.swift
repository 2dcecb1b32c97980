import Foundation

/// Starts `hangar ARGS` as a process of its own, the way a host would run a daemon: in `directory`
/// (so no `.hangar/` of the folder the tests run from is seen), with HOME there too and no
/// `HANGAR_*` variable of the caller's, its output in `directory/NAME.log` (returned). With
/// `networkNamespace`, inside that namespace through `nsenter --net` (not `ip netns exec`, which
/// mounts a sysfs of its own and so hides the cgroups).
public func startHangarDaemon(
    _ arguments: [String],
    name: String,
    in directory: URL,
    networkNamespace: String? = nil
) throws -> (process: Process, log: URL) {
    let process = Process()
    if let networkNamespace {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        process.arguments = ["--net=/run/netns/\(networkNamespace)", "--", try hangarBinary().path] + arguments
    } else {
        process.executableURL = try hangarBinary()
        process.arguments = arguments
    }
    process.currentDirectoryURL = directory
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("HANGAR_") }
    environment["HOME"] = directory.path
    environment["XDG_CONFIG_HOME"] = directory.path
    process.environment = environment
    let log = directory.appendingPathComponent("\(name).log")
    FileManager.default.createFile(atPath: log.path, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: log)
    process.standardError = process.standardOutput
    process.standardInput = FileHandle.nullDevice
    try process.run()
    return (process, log)
}
