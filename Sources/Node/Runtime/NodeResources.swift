/// What the sandboxes of one node draw from: host uids of their own (``SandboxUsers``), the /30
/// subnets of allowlist jobs' networks, user namespaces made ahead of need for containers, where
/// job cgroups go (``CgroupHost``), the upstream DNS resolver of jobs' resolvers, and the ``SandboxLedger`` where what they make on the host is
/// noted for the sweep after a crash. Whoever builds a node builds one of these and hands it to the
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
    /// Where the sandboxes' cgroups, scratch mounts, network namespaces, containers and processes
    /// are noted while they exist; the ``NodeAgent`` sweeps its directory when it starts, then
    /// opens it, and closes it when it stops (until then it notes nothing).
    public let ledger: SandboxLedger
    /// Prepared mount trees of grant sets for `process` jobs and `microvm` shares (noted in
    /// ``ledger``; taken down at the node's stop).
    public let grantViews: GrantViews
    /// Where allowlist jobs' resolvers send the names their grants allow (nil: jobs whose grants
    /// name hosts are refused).
    public let dnsUpstream: DNSUpstream?

    /// A node's resources: sandboxes run as the uids of `users`, job cgroups go where `cgroups`
    /// says (detected from this machine's mounts by default), and what they make is noted in
    /// `ledger` (one in ``SandboxLedger/defaultDirectory`` by default); grant views go under
    /// `grantViewRoot` (where none can be made, jobs bind their grants path by path).
    public init(
        users: SandboxUsers,
        cgroups: Result<CgroupHost, CgroupError> = CgroupHost.detect(),
        ledger: SandboxLedger = SandboxLedger(),
        dnsUpstream: DNSUpstream? = DNSUpstream.system(),
        grantViewRoot: String = GrantViews.defaultRoot
    ) {
        self.users = users
        self.dnsUpstream = dnsUpstream
        self.cgroups = cgroups
        self.ledger = ledger
        subnets = SubnetPool()
        namespaces = OwnedNamespaceStock(size: 2, users: users, ledger: ledger)
        grantViews = GrantViews(root: grantViewRoot, ledger: ledger)
    }

    /// What runtimes and node agents built without resources of their own use: the standard uid
    /// range (``SandboxUsers/standardFirst``), this machine's cgroups and a ledger in
    /// ``SandboxLedger/defaultDirectory``. A `hangar node` daemon builds its own instead.
    public static let standard = NodeResources(users: SandboxUsers.standard())
}
