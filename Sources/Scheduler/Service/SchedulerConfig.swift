/// Settings of one scheduler process.
public struct SchedulerConfig: Sendable {
    /// SQLite database file; its folder must exist.
    public var databasePath: String
    /// A node whose last heartbeat is older than `nodeTTL + nodeGrace` is down; its attempts are LOST.
    public var nodeTTL: Duration = .seconds(3)
    public var nodeGrace: Duration = .seconds(2)
    /// How long a job may wait for capacity (from its submission) before it ends `EXPIRED`.
    public var queueTimeout: Duration = .seconds(30)
    /// How long an attempt may go unlisted by the heartbeats of its node (up, heartbeating) before
    /// it is declared LOST and retried: its assignment or its result went missing.
    public var unlistedGrace: Duration = .seconds(30)
    /// How long an accepted submission may go without reaching the store before the scheduler asks
    /// the intake stream whether it still holds it, and publishes it again if not (a JetStream
    /// cluster that acknowledged it lost it). More than the intake consumer's ack wait, so that a
    /// delivery that went missing has come again first.
    public var intakeLossGrace: Duration = .seconds(20)
    /// How long a node has to answer an assignment.
    public var assignTimeout: Duration = .seconds(2)
    /// Spread load across nodes, or pack it onto as few as possible.
    public var placementPolicy: PlacementPolicy = .spread
    /// Allocatable CPU per node is its cores times this.
    public var cpuOvercommit: Double = 4
    /// The tenants file (YAML, see `TenantDirectory`); nil: every tenant gets the defaults. Re-read
    /// when it changes.
    public var tenantsFile: String?
    public var tenants = TenantDirectory()
    /// Stored results and audit rows older than this are pruned (every `pruneInterval`); nil keeps
    /// everything. Job rows stay (status, request id).
    public var retention: Duration?
    public var pruneInterval: Duration = .seconds(600)
    public var validator = RequestValidator()
    /// How long an admitted submission may wait for the intake stream's PubAck before the tenant is
    /// refused (`intake stream unavailable`).
    public var intakePublishTimeout: Duration = .seconds(5)
    /// Test hook: false leaves submissions in the intake stream without committing them to SQLite,
    /// as a scheduler that dies between the stream's ack and its commit.
    public var consumeIntake = true
    /// How many JetStream servers hold a copy of each of Hangar's streams: 1 on a single server,
    /// 3 on a cluster of three (each acknowledged message is then on two servers at least, and
    /// the loss of any one server loses nothing). Existing streams are changed to it at start.
    public var streamReplicas = 1
    /// The leader term this scheduler was elected in (``LeaderLease``); every assignment, cancel
    /// and sandbox message it sends carries it, and nodes refuse a term lower than one they have
    /// seen. 0: no election (one scheduler); nodes accept it always.
    public var term: UInt64 = 0
    /// Called once when a node refuses this scheduler's term as stale: a newer scheduler leads, and
    /// this one must stop acting at once (`hangar scheduler` exits, to come back as a standby).
    public var onDeposed: (@Sendable (String) -> Void)?
    /// With a leader lease: whether this scheduler still holds it by its own clock
    /// (``LeaderLease/holds(at:)``). Checked before every assignment and sandbox start (false: the
    /// send waits until the lease is held again) and before every pull from the streams (false: no
    /// pull), so that a leader whose lease is suspended does nothing another leader could not undo.
    public var holdsLease: (@Sendable () -> Bool)?
    /// With a leader lease: this process's holder id (see ``LeaderLease/makeHolderID()``); the
    /// scheduler then listens on ``Subjects/schedulerPresence`` and lists the other schedulers it
    /// hears in `hangar cluster status`.
    public var leaseHolder: String?

    public init(databasePath: String) {
        self.databasePath = databasePath
    }
}
