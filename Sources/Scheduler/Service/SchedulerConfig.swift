/// Settings of one scheduler process.
public struct SchedulerConfig: Sendable {
    /// SQLite database file; its folder must exist.
    public var databasePath: String
    /// A node whose last heartbeat is older than this is down.
    public var nodeDownAfter: Duration = .seconds(5)
    /// How long a job may wait for capacity before it is rejected with `no_capacity`.
    public var queueTimeout: Duration = .seconds(30)
    /// How long a node has to answer an assignment.
    public var assignTimeout: Duration = .seconds(2)
    /// Most jobs waiting for capacity at once; beyond it submissions get `queue_full`.
    public var maxQueued = 100_000
    public var validator = RequestValidator()

    public init(databasePath: String) {
        self.databasePath = databasePath
    }
}
