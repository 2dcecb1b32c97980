import Foundation
import Glibc

/// The cgroup interface a node uses for job limits.
public enum CgroupVersion: String, Codable, Sendable, Equatable {
    /// One hierarchy per controller (memory, pids, cpu, cpuacct, freezer).
    case v1
    /// The unified hierarchy with the memory, pids and cpu controllers.
    case v2
}

/// A controller the process runtime puts each job under.
enum CgroupController: String, CaseIterable, Sendable {
    case memory, pids, cpu, cpuacct, freezer

    /// What v2 needs enabled in `cgroup.subtree_control`; cpuacct and freezer are built in there.
    static let unified: [CgroupController] = [.memory, .pids, .cpu]
}

/// One directory per controller. On v1, controllers mounted together (such as "cpu,cpuacct")
/// share a directory; on v2 all five are the same directory.
struct ControllerDirectories: Codable, Sendable, Equatable {
    var memory: String
    var pids: String
    var cpu: String
    var cpuacct: String
    var freezer: String

    /// Calls `directory` once per controller, in ``CgroupController/allCases`` order.
    init<Failure: Error>(_ directory: (CgroupController) throws(Failure) -> String) throws(Failure) {
        memory = try directory(.memory)
        pids = try directory(.pids)
        cpu = try directory(.cpu)
        cpuacct = try directory(.cpuacct)
        freezer = try directory(.freezer)
    }

    /// The directory of `controller`.
    subscript(controller: CgroupController) -> String {
        switch controller {
        case .memory: memory
        case .pids: pids
        case .cpu: cpu
        case .cpuacct: cpuacct
        case .freezer: freezer
        }
    }

    /// The distinct directories, sorted.
    var distinct: [String] { Set([memory, pids, cpu, cpuacct, freezer]).sorted() }
}

/// Where this node creates job cgroups: a `hangar` directory in each hierarchy (v1) or in the
/// unified one (v2), ready for children. Detected by ``detect()``, once per node
/// (``NodeResources/cgroups``).
public struct CgroupHost: Sendable {
    /// v1 or v2.
    public let version: CgroupVersion
    /// The parent directory for job cgroups, by controller.
    let parents: ControllerDirectories

    /// The distinct parent directories, sorted.
    public var parentDirectories: [String] { parents.distinct }

    /// The name of the directory that holds the job cgroups.
    static let parentName = "hangar"

    /// This machine's cgroup host, or why cgroups cannot be used (no cgroup file system, a
    /// controller missing, no permission to create cgroups).
    public static func detect() -> Result<CgroupHost, CgroupError> {
        detect(CgroupMounts.current())
    }

    /// Prefers a fully usable v2 hierarchy, then v1. Each candidate parent is first a `hangar`
    /// directory at the top of the hierarchy (the node's own cgroup may be a leaf that others
    /// manage), then one inside the node's own cgroup (for a delegated subtree in a container).
    static func detect(_ mounts: CgroupMounts) -> Result<CgroupHost, CgroupError> {
        var reasons: [String] = []
        do {
            return .success(try detectV2(mounts))
        } catch {
            reasons.append("cgroup v2: \(error.description)")
        }
        do {
            return .success(try detectV1(mounts))
        } catch {
            reasons.append("cgroup v1: \(error.description)")
        }
        return .failure(CgroupError(reasons.joined(separator: "; ")))
    }

    private static func detectV2(_ mounts: CgroupMounts) throws(CgroupError) -> CgroupHost {
        guard let mount = mounts.v2Mount else { throw CgroupError("no cgroup2 file system is mounted") }
        let available = Set(
            (CgroupFile.read(mount.mountPoint + "/cgroup.controllers") ?? "").split(separator: " ").map {
                $0.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        )
        let missing = CgroupController.unified.map(\.rawValue).filter { !available.contains($0) }
        guard missing.isEmpty else {
            throw CgroupError(
                "\(mount.mountPoint) lacks the \(missing.joined(separator: ", ")) controller(s) "
                    + "(they are bound to v1 hierarchies or disabled)"
            )
        }
        let bases = candidateBases(mount, own: mounts.ownV2)
        let parent = try firstWorking(bases) { base throws(CgroupError) in try prepareV2Parent(under: base) }
        return CgroupHost(version: .v2, parents: try ControllerDirectories { _ throws(CgroupError) in parent })
    }

    private static func detectV1(_ mounts: CgroupMounts) throws(CgroupError) -> CgroupHost {
        var prepared: [String: String] = [:]  // mount point -> parent, for co-mounted controllers
        let parents = try ControllerDirectories { controller throws(CgroupError) in
            guard let mount = mounts.v1Mount(for: controller.rawValue) else {
                throw CgroupError("no v1 hierarchy has the \(controller.rawValue) controller")
            }
            if let parent = prepared[mount.mountPoint] { return parent }
            let bases = candidateBases(mount, own: mounts.ownV1[controller.rawValue])
            let parent = try firstWorking(bases) { base throws(CgroupError) in try prepareV1Parent(under: base) }
            prepared[mount.mountPoint] = parent
            return parent
        }
        return CgroupHost(version: .v1, parents: parents)
    }

    /// The top of the hierarchy, then the node's own cgroup, without duplicates.
    private static func candidateBases(_ mount: CgroupMounts.Mount, own: String?) -> [String] {
        var bases = [mount.mountPoint]
        if let own, let directory = CgroupMounts.directory(of: own, in: mount), directory != mount.mountPoint {
            bases.append(directory)
        }
        return bases
    }

    private static func firstWorking(
        _ bases: [String],
        _ prepare: (String) throws(CgroupError) -> String
    ) throws(CgroupError) -> String {
        var reasons: [String] = []
        for base in bases {
            do {
                return try prepare(base)
            } catch {
                reasons.append(error.description)
            }
        }
        throw CgroupError(reasons.joined(separator: "; "))
    }

    private static func prepareV1Parent(under base: String) throws(CgroupError) -> String {
        let parent = base + "/" + parentName
        try makeDirectory(parent)
        try probeChild(of: parent, expecting: nil)
        return parent
    }

    /// Enables the controllers for the children of `base` and of the new parent. The kernel refuses
    /// that (EBUSY) in a non-root cgroup that holds processes itself.
    private static func prepareV2Parent(under base: String) throws(CgroupError) -> String {
        let enable = CgroupController.unified.map { "+" + $0.rawValue }.joined(separator: " ")
        try enableControllers(enable, in: base)
        let parent = base + "/" + parentName
        try makeDirectory(parent)
        try enableControllers(enable, in: parent)
        try probeChild(of: parent, expecting: "memory.max")
        return parent
    }

    private static func enableControllers(_ enable: String, in directory: String) throws(CgroupError) {
        let enabled = Set(
            (CgroupFile.read(directory + "/cgroup.subtree_control") ?? "").split(whereSeparator: \.isWhitespace)
        )
        if CgroupController.unified.allSatisfy({ enabled.contains(Substring($0.rawValue)) }) { return }
        try CgroupFile.write(enable, to: directory + "/cgroup.subtree_control")
    }

    private static func makeDirectory(_ path: String) throws(CgroupError) {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else { throw .system("create", path) }
    }

    /// Creates and removes a child, proving job cgroups can be made here (and, on v2, that they get
    /// the controller files).
    private static func probeChild(of parent: String, expecting file: String?) throws(CgroupError) {
        let child = parent + "/probe-\(getpid())"
        guard mkdir(child, 0o755) == 0 || errno == EEXIST else { throw .system("create", child) }
        defer { rmdir(child) }
        if let file, !CgroupFile.exists(child + "/" + file) {
            throw CgroupError("\(child) has no \(file): the controller is not enabled for it")
        }
    }
}
