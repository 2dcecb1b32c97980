import Foundation
import HangarNATS
import HangarShared
import Synchronization

/// The E2B gateway's API keys, kept by the scheduler (table `api_keys`: the key's SHA-256 → tenant).
///
/// Operators create, revoke and list keys with `hangar.admin.apikey-create`, `apikey-revoke` and
/// `apikey-list` (`hangar tenant add NAME --api-key`, `hangar tenant api-key revoke|ls`); gateways
/// ask which tenant a key is for on `hangar.gateway.apikey` (`Hangar_V1_APIKeyLookupRequest`, the
/// key's SHA-256 only). Creations and revocations are audited, and so are failed lookups (at most
/// ``APIKeyAuditBudget/perSecond`` rows a second; the rest are counted into the next row).
extension Scheduler {
    /// `hangar.admin.apikey-*`: the operator's key management; nil for another verb.
    nonisolated func apiKeyAdminReply(verb: String, payload: Data) async -> Data? {
        switch verb {
        case "apikey-create":
            var reply = Hangar_V1_APIKeyAdminReply()
            if let request = try? Hangar_V1_APIKeyCreateRequest(serializedBytes: payload) {
                reply = await createAPIKey(request)
            } else {
                reply.message = "the payload is not a hangar.v1.APIKeyCreateRequest"
            }
            return try? reply.serializedData()
        case "apikey-revoke":
            var reply = Hangar_V1_APIKeyAdminReply()
            if let request = try? Hangar_V1_APIKeyRevokeRequest(serializedBytes: payload) {
                reply = await revokeAPIKey(request)
            } else {
                reply.message = "the payload is not a hangar.v1.APIKeyRevokeRequest"
            }
            return try? reply.serializedData()
        case "apikey-list":
            var reply = Hangar_V1_APIKeyListReply()
            if let request = try? Hangar_V1_APIKeyListRequest(serializedBytes: payload) {
                do {
                    reply.keys = try await store.apiKeys(
                        tenant: request.tenant.isEmpty ? nil : request.tenant,
                        includeRevoked: request.includeRevoked
                    ).map(\.info)
                } catch {
                    reply.message = "the store could not be read: \(error)"
                }
            } else {
                reply.message = "the payload is not a hangar.v1.APIKeyListRequest"
            }
            return try? reply.serializedData()
        default:
            return nil
        }
    }

    nonisolated func createAPIKey(_ request: Hangar_V1_APIKeyCreateRequest) async -> Hangar_V1_APIKeyAdminReply {
        var reply = Hangar_V1_APIKeyAdminReply()
        guard Subjects.isValidToken(request.tenant) else {
            reply.message = "the tenant must be 1-64 characters of A-Z a-z 0-9 _ -"
            return reply
        }
        guard APIKeyWrite.isHash(request.keySha256) else {
            reply.message = "key_sha256 must be a SHA-256 in 64 lowercase hex digits (the key itself is never sent)"
            return reply
        }
        let actor = request.actor.isEmpty ? "operator" : "operator:\(request.actor)"
        let key = StoredAPIKey(
            hash: request.keySha256,
            tenant: request.tenant,
            createdAtMs: unixMilliseconds(),
            createdBy: actor
        )
        do {
            if try await store.apiKey(id: key.id) != nil {
                reply.message = "an API key with id \(key.id) exists already; make another key"
                return reply
            }
            try await store.write(.apiKey(.created(key)))
        } catch {
            reply.message = "could not store the API key: \(error)"
            return reply
        }
        logger.notice(
            "API key created",
            metadata: ["tenant": "\(key.tenant)", "key.id": "\(key.id)", "actor": "\(actor)"]
        )
        reply.ok = true
        reply.key = key.info
        reply.message = "API key \(key.id) for tenant \(key.tenant)"
        return reply
    }

    nonisolated func revokeAPIKey(_ request: Hangar_V1_APIKeyRevokeRequest) async -> Hangar_V1_APIKeyAdminReply {
        var reply = Hangar_V1_APIKeyAdminReply()
        let actor = request.actor.isEmpty ? "operator" : "operator:\(request.actor)"
        do {
            guard APIKeyWrite.isID(request.keyID), var key = try await store.apiKey(id: request.keyID) else {
                reply.message = "no API key with id '\(request.keyID.prefix(64))' (see `hangar tenant api-key ls`)"
                return reply
            }
            if key.revokedAtMs != 0 {
                reply.ok = true
                reply.key = key.info
                reply.message = "API key \(key.id) of tenant \(key.tenant) was already revoked"
                return reply
            }
            try await store.write(.apiKey(.revoked(id: key.id, tenant: key.tenant, actor: actor)))
            key = try await store.apiKey(id: key.id) ?? key
            reply.ok = true
            reply.key = key.info
            reply.message =
                "API key \(key.id) of tenant \(key.tenant) revoked (gateways that cached it accept it for up to 10 s more)"
            logger.notice(
                "API key revoked",
                metadata: ["tenant": "\(key.tenant)", "key.id": "\(key.id)", "actor": "\(actor)"]
            )
        } catch {
            reply.message = "the store failed: \(error)"
        }
        return reply
    }

    /// `hangar.gateway.apikey`: which tenant a key is for. Answered only into a gateway's inbox
    /// (`_INBOX.g.<name>.`; any other reply subject is dropped and audited as `access.denied`).
    nonisolated func handleAPIKeyLookup(_ message: NATSMessage) async {
        guard let replyTo = message.replyTo else { return }
        let gateway = Subjects.token(replyTo, at: 2).map(String.init) ?? ""
        let actor = "gateway:\(gateway.prefix(64))"
        if let refusal = apiKeyReplyRefusal(replyTo, gateway: gateway) {
            logger.warning(
                "an API key lookup asked for its answer outside a gateway's inbox; dropped",
                metadata: ["reply": "\(replyTo.prefix(200))"]
            )
            store.enqueue(
                .audit(actor: actor, event: "access.denied", jobID: nil, detail: "\(refusal) (on \(message.subject))"),
                onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
            )
            return
        }
        var reply = Hangar_V1_APIKeyLookupReply()
        if let request = try? Hangar_V1_APIKeyLookupRequest(serializedBytes: message.payload),
            APIKeyWrite.isHash(request.keySha256)
        {
            do {
                if let key = try await store.apiKey(hash: request.keySha256) {
                    if key.revokedAtMs == 0 {
                        reply.found = true
                        reply.tenant = key.tenant
                        reply.keyID = key.id
                    } else {
                        auditFailedLookup(actor: actor, "revoked API key \(key.id) of tenant \(key.tenant)")
                    }
                } else {
                    let id = request.keySha256.prefix(APIKeyWrite.idLength)
                    auditFailedLookup(actor: actor, "unknown API key (SHA-256 \(id)...)")
                }
            } catch {
                reply.error = "the scheduler's store could not be read: \(error)"
            }
        } else {
            auditFailedLookup(actor: actor, "malformed lookup (not an APIKeyLookupRequest with a SHA-256)")
        }
        try? nats.publish(replyTo, payload: (try? reply.serializedData()) ?? Data())
    }

    /// Nil if an API key lookup may be answered on `replyTo`, else why not: a gateway's inbox when
    /// the cluster runs Hangar's authorization, else any inbox outside a tenant's.
    nonisolated func apiKeyReplyRefusal(_ replyTo: String, gateway: String) -> String? {
        guard replyTo.hasPrefix("_INBOX.g.") || !replyRule.ownInboxOnly else {
            return "reply subject \(replyTo.prefix(200)) is not a gateway's inbox (_INBOX.g.>)"
        }
        return replyRule.refusal(replyTo: replyTo, principal: .gateway(Subjects.isValidToken(gateway) ? gateway : "_"))
    }

    /// Audits a failed lookup, within the budget (see ``APIKeyAuditBudget``).
    nonisolated func auditFailedLookup(actor: String, _ detail: String) {
        guard let suppressed = apiKeyAuditBudget.take() else {
            logger.info("API key lookup failed (not audited: over the audit budget)", metadata: ["detail": "\(detail)"])
            return
        }
        let more = suppressed > 0 ? " (and \(suppressed) more failed lookups not audited one by one before it)" : ""
        logger.info("API key lookup failed", metadata: ["actor": "\(actor)", "detail": "\(detail)"])
        store.enqueue(
            .audit(actor: actor, event: "apikey.lookup_failed", jobID: nil, detail: detail + more),
            onError: { [logger] error in logger.error("could not audit", metadata: ["error": "\(error)"]) }
        )
    }
}

/// How many failed API key lookups are audited one by one: at most ``perSecond`` rows a second, so a
/// caller trying keys cannot flood the audit table; those over the budget are counted, and the count
/// goes into the next row audited.
final class APIKeyAuditBudget: Sendable {
    /// Rows a second.
    static let perSecond = 20
    private let state = Mutex<(second: Int64, used: Int, suppressed: Int)>((0, 0, 0))

    /// Nil if over the budget (counted); else how many were suppressed before this one.
    func take(now: Int64 = unixMilliseconds()) -> Int? {
        state.withLock { state in
            let second = now / 1000
            if second != state.second {
                state.second = second
                state.used = 0
            }
            guard state.used < Self.perSecond else {
                state.suppressed += 1
                return nil
            }
            state.used += 1
            defer { state.suppressed = 0 }
            return state.suppressed
        }
    }
}
