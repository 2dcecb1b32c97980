import Foundation
import HangarShared

extension Scheduler {
    /// Prunes results and audit rows older than the retention, at start and every `pruneInterval`.
    func pruneIfDue(now: ContinuousClock.Instant) async {
        guard let retention = config.retention else { return }
        if let last = lastPrune, now - last < config.pruneInterval { return }
        lastPrune = now
        let (seconds, attoseconds) = retention.components
        let cutoff = unixMilliseconds() - (seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        do {
            let pruned = try await store.prune(before: cutoff)
            if pruned.results > 0 || pruned.auditRows > 0 {
                logger.notice(
                    "pruned old results and audit rows",
                    metadata: ["results": "\(pruned.results)", "audit.rows": "\(pruned.auditRows)"]
                )
            }
        } catch {
            logger.error("pruning failed", metadata: ["error": "\(error)"])
        }
    }
}
