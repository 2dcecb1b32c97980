import Foundation

/// A minimal OCI bundle for the raw-tool baselines: `runc spec`'s defaults (its namespaces, mounts,
/// masked paths and capabilities), a read-only rootfs of mount points with the host's `/usr` and
/// `/etc/ld.so.cache` bound in read-only, and `python3 -c pass` as the process. No cgroup limits,
/// seccomp or user namespace of Hangar's: it is what a user running the tool by hand would pay.
struct RawOCIBundle {
    let path: String

    static func make() throws -> RawOCIBundle {
        let path = NSTemporaryDirectory() + "hangar-bench-bundle-\(UInt32.random(in: 0...UInt32.max))"
        let rootfs = path + "/rootfs"
        let files = FileManager.default
        for directory in ["usr", "proc", "dev", "sys", "tmp", "etc"] {
            try files.createDirectory(atPath: rootfs + "/" + directory, withIntermediateDirectories: true)
        }
        for link in ["bin", "lib", "lib64", "sbin"] {
            try files.createSymbolicLink(atPath: rootfs + "/" + link, withDestinationPath: "usr/" + link)
        }
        files.createFile(atPath: rootfs + "/etc/ld.so.cache", contents: Data())
        try spawnAndWait("/usr/sbin/runc", ["spec", "--bundle", path])
        let configPath = path + "/config.json"
        guard
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath)))
                as? [String: Any], var process = config["process"] as? [String: Any],
            var mounts = config["mounts"] as? [[String: Any]]
        else { throw BenchError("runc spec wrote an unexpected config.json") }
        process["terminal"] = false
        process["args"] = ["/usr/bin/python3", "-c", "pass"]
        config["process"] = process
        mounts.append(["destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]])
        mounts.append([
            "destination": "/etc/ld.so.cache", "type": "bind", "source": "/etc/ld.so.cache", "options": ["bind", "ro"],
        ])
        config["mounts"] = mounts
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
        return RawOCIBundle(path: path)
    }

    /// `runc run` (or runsc with `flags`) of the bundle, to completion, under a fresh container id.
    func run(_ tool: String, flags: [String] = []) throws {
        let id = "hangar-bench-raw-\(UInt32.random(in: 0...UInt32.max))"
        try spawnAndWait(tool, flags + ["run", "--bundle", path, id])
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}
