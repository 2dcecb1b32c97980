/// What the sandboxes of one node draw from: host uids of their own (``SandboxUsers``), the /30
/// subnets of allowlist jobs' networks, user namespaces made ahead of need for containers, and where
/// job cgroups go (``CgroupHost``). Whoever builds a node builds one of these and hands it to the
/// node's runtimes and its ``NodeAgent``, so that two nodes in one process (tests, `hangar dev`'s
/// cluster if it wants) share nothing of it.
///
/// Host uids are a host-wide resource: two values used at the same time should be given disjoint
/// uid ranges, or two sandboxes may run as the same host user.
public struct NodeResources: Sendable {
    /// Host uids for sandboxes, one per running sandbox.
    public let users: SandboxUsers
    /// The subnets of allowlist jobs' networks.
    let subnets: SubnetPool
    /// Ready-made user namespaces for containers; drained when the node stops.
    let namespaces: OwnedNamespaceStock
    /// Where job cgroups go, or why there are none (then the process runtime refuses every job).
    public let cgroups: Result<CgroupHost, CgroupError>

    /// A node's resources: sandboxes run as the uids of `users`, and job cgroups go where
    /// `cgroups` says (detected from this machine's mounts by default).
    public init(users: SandboxUsers, cgroups: Result<CgroupHost, CgroupError> = CgroupHost.detect()) {
        self.users = users
        self.cgroups = cgroups
        subnets = SubnetPool()
        namespaces = OwnedNamespaceStock(size: 2, users: users)
    }

    /// What runtimes and node agents built without resources of their own use: the standard uid
    /// range (``SandboxUsers/standardFirst``) and this machine's cgroups. A `hangar node` daemon
    /// builds its own instead.
    public static let standard = NodeResources(users: SandboxUsers.standard())
}
