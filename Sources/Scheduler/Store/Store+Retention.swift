import GRDB
import HangarShared

extension Store {
    /// What one pruning removed.
    public struct Pruned: Sendable, Equatable {
        /// Stored results deleted.
        public var results: Int
        /// Audit rows deleted (behind the new checkpoint).
        public var auditRows: Int

        /// A count of pruned results and audit rows.
        public init(results: Int, auditRows: Int) {
            self.results = results
            self.auditRows = auditRows
        }
    }

    /// Deletes stored results of jobs that finished before `cutoff` (unix ms) and audit rows written
    /// before it, keeping the audit chain verifiable through a checkpoint (see `AuditChain`). Job
    /// rows stay: a job's status and its request id (idempotency) outlive its result.
    public func prune(before cutoff: Int64) async throws -> Pruned {
        // Through the group commit, so that a replicated store logs it like every other change.
        let tally = PruneTally()
        try await write(.prune(before: cutoff, tally: tally))
        return tally.pruned
    }
}
