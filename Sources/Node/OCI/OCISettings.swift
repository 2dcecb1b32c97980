// Node-side settings of the OCI runtimes.

/// Where an OCI runtime keeps its things on the node.
public struct OCIDirectories: Sendable, Equatable {
    /// The runtime's `--root`: its container state. Best on a tmpfs such as `/run`.
    public var state: String
    /// Where the per-job bundles are written: this directory is 0700 (0711 with a user namespace),
    /// each bundle in it 0700.
    public var bundles: String
    /// The cgroup below which every container gets its own, e.g. `hangar` for `/hangar/<id>`.
    public var cgroupParent: String

    /// Directories as given; paths must be absolute, `cgroupParent` relative (no leading slash).
    public init(state: String, bundles: String, cgroupParent: String = "hangar") {
        self.state = state
        self.bundles = bundles
        self.cgroupParent = cgroupParent
    }
}

/// How a user namespace maps the container's ids onto the host's: container id `n` is host id
/// `hostID + n`, for `size` ids. The job's uid 65534 is then host uid `hostID + 65534`, which owns
/// nothing on the host.
public struct OCIUserNamespace: Sendable, Equatable {
    /// Host id of the container's root.
    public var hostID: UInt32
    /// How many ids are mapped; at least 65535 so that 65534 is inside.
    public var size: UInt32

    /// A mapping of `size` ids starting at host id `hostID`.
    public init(hostID: UInt32, size: UInt32 = 65_536) {
        self.hostID = hostID
        self.size = size
    }

    /// Container ids 0…65535 on host ids 100000…165535, the range `useradd` gives the first
    /// subordinate-id user.
    public static let standard = OCIUserNamespace(hostID: 100_000)
}
