import Foundation

/// The cgroup file systems this process can see (from `/proc/self/mountinfo`) and the cgroups it
/// sits in (from `/proc/self/cgroup`).
struct CgroupMounts: Sendable {
    /// One cgroup or cgroup2 mount.
    struct Mount: Sendable, Equatable {
        /// "cgroup" (v1) or "cgroup2".
        var type: String
        /// The cgroup the mount shows as its top (not "/" inside some containers).
        var root: String
        /// Where it is mounted.
        var mountPoint: String
        /// The v1 controllers bound to this hierarchy ("cpu", "cpuacct", …); empty for cgroup2.
        var controllers: Set<String>
    }

    var mounts: [Mount]
    /// This process's cgroup in each v1 hierarchy, by controller.
    var ownV1: [String: String]
    /// This process's cgroup in the unified (v2) hierarchy, if it has one.
    var ownV2: String?

    /// Reads both files of the calling process.
    static func current() -> CgroupMounts {
        CgroupMounts(
            mountInfo: CgroupFile.read("/proc/self/mountinfo") ?? "",
            cgroups: CgroupFile.read("/proc/self/cgroup") ?? ""
        )
    }

    /// Parses the text of `/proc/<pid>/mountinfo` and `/proc/<pid>/cgroup`.
    init(mountInfo: String, cgroups: String) {
        mounts = mountInfo.split(separator: "\n").compactMap(Self.mount)
        ownV1 = [:]
        ownV2 = nil
        for line in cgroups.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if fields[0] == "0" && fields[1].isEmpty {
                ownV2 = String(fields[2])
            } else {
                for controller in fields[1].split(separator: ",") { ownV1[String(controller)] = String(fields[2]) }
            }
        }
    }

    /// The v1 hierarchy that `controller` is bound to.
    func v1Mount(for controller: String) -> Mount? {
        mounts.first { $0.type == "cgroup" && $0.controllers.contains(controller) }
    }

    /// The unified hierarchy, if mounted.
    var v2Mount: Mount? {
        mounts.first { $0.type == "cgroup2" }
    }

    /// Where `cgroup` (a path inside the hierarchy, as `/proc/self/cgroup` shows it) is in the file
    /// system, or nil when the mount does not show it.
    static func directory(of cgroup: String, in mount: Mount) -> String? {
        let root = mount.root == "/" ? "" : mount.root
        guard cgroup == mount.root || cgroup.hasPrefix(root + "/") else { return nil }
        let inside = String(cgroup.dropFirst(root.count))
        return inside == "/" || inside.isEmpty ? mount.mountPoint : mount.mountPoint + inside
    }

    /// "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory"
    private static func mount(_ line: Substring) -> Mount? {
        let fields = line.split(separator: " ")
        guard let separator = fields.firstIndex(of: "-"), separator >= 5, fields.count > separator + 3 else {
            return nil
        }
        let type = String(fields[separator + 1])
        guard type == "cgroup" || type == "cgroup2" else { return nil }
        let options = Set(fields[separator + 3].split(separator: ",").map(String.init))
        return Mount(
            type: type,
            root: unescape(fields[3]),
            mountPoint: unescape(fields[4]),
            controllers: type == "cgroup" ? options : []
        )
    }

    /// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
    private static func unescape(_ field: Substring) -> String {
        guard field.contains("\\") else { return String(field) }
        var bytes: [UInt8] = []
        var rest = Array(field.utf8)[...]
        while let byte = rest.first {
            if byte == UInt8(ascii: "\\"), rest.count >= 4,
                let value = UInt8(String(decoding: rest.dropFirst().prefix(3), as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                rest = rest.dropFirst(4)
            } else {
                bytes.append(byte)
                rest = rest.dropFirst()
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
