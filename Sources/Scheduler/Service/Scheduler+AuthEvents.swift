import Foundation
import HangarNATS
import HangarShared

extension Scheduler {
    /// Logs and audits (`auth.failed`) every login nats-server refuses (unknown user or NKey, wrong
    /// password or signature), read from the server's `$SYS.SERVER.*.CLIENT.AUTH.ERR` events on `connection`, a
    /// login in the system account (`Principal.system`). At most 20 rows a second reach the audit;
    /// a flood beyond that is counted in the next row. Runs until cancelled.
    public nonisolated func auditAuthFailures(from connection: NATSConnection) async throws {
        let events = try await connection.subscribeConfirmed("$SYS.SERVER.*.CLIENT.AUTH.ERR")
        defer { events.unsubscribe() }
        var windowStart = ContinuousClock.now
        var inWindow = 0
        var suppressed = 0
        for await message in events {
            let now = ContinuousClock.now
            if now - windowStart >= .seconds(1) {
                windowStart = now
                inWindow = 0
            }
            inWindow += 1
            guard inWindow <= 20 else {
                suppressed += 1
                continue
            }
            var detail = AuthFailure.summary(of: message.payload)
            if suppressed > 0 {
                detail += " (and \(suppressed) more not audited one by one)"
                suppressed = 0
            }
            logger.warning("NATS refused a login", metadata: ["detail": "\(detail)"])
            store.enqueue(
                .audit(actor: "nats", event: "auth.failed", jobID: nil, detail: detail),
                onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
            )
        }
    }
}

/// nats-server's authentication-failure event (JSON): who tried, from where, and why.
enum AuthFailure {
    static func summary(of payload: Data) -> String {
        guard payload.count <= 64 * 1024,
            let object = try? JSONSerialization.jsonObject(with: payload) as? [String: Any]
        else { return "an unreadable authentication-failure event" }
        let client = object["client"] as? [String: Any] ?? [:]
        func field(_ value: Any?) -> String {
            let text = (value as? String) ?? (value as? NSNumber)?.stringValue ?? ""
            return text.isEmpty ? "?" : String(text.prefix(100))
        }
        return
            "user \(field([client["user"], client["nkey"]].first { ($0 as? String)?.isEmpty == false } ?? nil)) from \(field(client["host"])) (client \(field(client["name"]))): \(field(object["reason"]))"
    }
}
